"""train.py end to end: SIGKILL + resume equals an uninterrupted run; initialisation; checkpoints complete."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import train as train_script
from model import build_model
from model.checkpoint import to_detectron2_state
from tests.synthetic_coco import training_config, write_synthetic_tfrecords
from training.checkpointing import TrainingCheckpoints
from training.initialization import initialize_weights
from training.optimizer import build_optimizer

ROOT = Path(__file__).resolve().parents[1]


def _losses(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss_total"] for r in map(json.loads, lines)}


def _train_py(config_path, *extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(config_path), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_losses_step_for_step(tmp_path):
    pattern = write_synthetic_tfrecords(tmp_path / "data", num_images=5)
    configs = {}
    for name in ("straight", "killed"):
        config = training_config(pattern, str(tmp_path / name), max_steps=14, checkpoint_every=4)
        configs[name] = tmp_path / f"{name}.json"
        config.save(str(configs[name]))

    straight = _train_py(configs["straight"])
    output = straight.communicate(timeout=600)[0]
    assert straight.returncode == 0, output
    assert "finished: 14 steps" in output

    killed = _train_py(configs["killed"])
    index = tmp_path / "killed" / "checkpoints" / "checkpoint"
    deadline = time.time() + 600
    while not index.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL  # killed during training, not after it finished
    steps_before_kill = max(_losses(tmp_path / "killed"))
    assert steps_before_kill < 14

    resumed = _train_py(configs["killed"])
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "resumed from" in output and "at step 4" in output
    reference, after = _losses(tmp_path / "straight"), _losses(tmp_path / "killed")
    assert sorted(after) == list(range(1, 15))
    np.testing.assert_allclose([after[s] for s in range(1, 15)], [reference[s] for s in range(1, 15)], rtol=1e-6)


def test_no_resume_refuses_a_folder_with_checkpoints(tmp_path, capsys):
    step = tf.Variable(3, dtype=tf.int64)
    tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(tmp_path / "run" / "checkpoints"), 1).save()
    config = training_config("unused-*.tfrecord", str(tmp_path / "run"))
    config.save(str(tmp_path / "c.json"))
    assert train_script.main(["--config", str(tmp_path / "c.json"), "--no-resume"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def _tiny(num_classes):
    config = training_config("unused", "unused")
    config.model.num_classes = num_classes
    return config


def test_checkpoint_restores_every_model_and_optimizer_variable(tmp_path):
    config = _tiny(2)
    saved_model = build_model(config)
    optimizer = build_optimizer(config.train, saved_model, learning_rate=1e-4)
    optimizer.apply([tf.ones_like(v) for v in saved_model.trainable_variables], saved_model.trainable_variables)
    stem = saved_model.backbone.stem.norm
    stem.moving_mean.assign(np.arange(stem.moving_mean.shape[0], dtype=np.float32))  # non-trainable state
    step = tf.Variable(7, dtype=tf.int64)
    TrainingCheckpoints(str(tmp_path), model=saved_model, optimizer=optimizer, step=step, keep=2).save()

    model = build_model(config)
    fresh_optimizer = build_optimizer(config.train, model, learning_rate=1e-4)
    fresh_step = tf.Variable(0, dtype=tf.int64)
    path = TrainingCheckpoints(str(tmp_path), model=model, optimizer=fresh_optimizer, step=fresh_step, keep=2)
    assert path.restore_latest().endswith("ckpt-7") and int(fresh_step.numpy()) == 7
    for a, b in zip(saved_model.variables, model.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert len(optimizer.variables) == len(fresh_optimizer.variables)
    for a, b in zip(optimizer.variables, fresh_optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def _write_pickle(path, state):
    with open(path, "wb") as f:
        pickle.dump({"model": state}, f, protocol=2)


def test_finetuning_loads_everything_but_a_class_head_of_another_size(tmp_path):
    source = build_model(_tiny(5))
    _write_pickle(tmp_path / "official.pkl", to_detectron2_state(source))
    config = _tiny(2)
    config.train.init_checkpoint = str(tmp_path / "official.pkl")
    model = build_model(config)
    head_before = model.transformer_decoder.class_embed.kernel.numpy().copy()
    summary = initialize_weights(model, config.train)
    assert "class head re-initialised (5 -> 2 classes)" in summary
    np.testing.assert_array_equal(model.transformer_decoder.class_embed.kernel.numpy(), head_before)
    loaded = to_detectron2_state(model)
    for name, value in to_detectron2_state(source).items():
        if not name.startswith("sem_seg_head.predictor.class_embed"):
            np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_imagenet_backbone_loads_the_backbone_only(tmp_path):
    source = build_model(_tiny(2))
    # detectron2's R-50.pkl names tensors without the "backbone." prefix and has no head.
    state = {k[len("backbone.") :]: v for k, v in to_detectron2_state(source).items() if k.startswith("backbone.")}
    _write_pickle(tmp_path / "R-50.pkl", state)
    config = _tiny(2)
    config.train.backbone_weights = str(tmp_path / "R-50.pkl")
    model = build_model(config)
    heads_before = {k: v for k, v in to_detectron2_state(model).items() if not k.startswith("backbone.")}
    assert "backbone from" in initialize_weights(model, config.train)
    loaded = to_detectron2_state(model)
    for name, value in to_detectron2_state(source).items():
        expected = value if name.startswith("backbone.") else heads_before[name]
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)

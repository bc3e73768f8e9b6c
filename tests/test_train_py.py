"""train.py end to end: SIGKILL + resume equals an uninterrupted run; initialisation; checkpoints complete."""

import io
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

import cli
import train as train_script
from model import build_model
from model.checkpoints import to_detectron2_state
from tests.synthetic_coco import training_config, write_synthetic_tfrecords
from training.checkpointing import TrainingCheckpoints
from training.initialization import initialize_weights
from training.optimizer import build_optimizer
from training.reporting import Progress
from training.resume import check_resume_config

ROOT = Path(__file__).resolve().parents[1]


def _losses(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss_total"] for r in map(json.loads, lines)}


def _train_py(config_path, *extra):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(config_path), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """A 14-step run without interruption: (data pattern, {step: loss}); runs of other tests compare with it."""
    tmp_path = tmp_path_factory.mktemp("straight")
    pattern = write_synthetic_tfrecords(tmp_path / "data", num_images=5)
    config = training_config(pattern, str(tmp_path / "run"), max_steps=14, checkpoint_every=4)
    config.save(str(tmp_path / "straight.json"))
    straight = _train_py(tmp_path / "straight.json")
    output = straight.communicate(timeout=1800)[0]
    assert straight.returncode == 0, output
    assert "finished: 14 steps" in output
    from inference.loading import model_settings

    settings = model_settings(str(tmp_path / "run" / "model.keras"))  # the final model carries its settings
    assert [c["name"] for c in settings["categories"]] == ["square", "disc"]
    assert settings["config"]["data.min_size_test"] == config.data.min_size_test
    return pattern, _losses(tmp_path / "run")


def _wait_for_steps(process, run_dir, steps: int) -> None:
    metrics = Path(run_dir) / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_save_the_current_step_and_resume_exactly(straight_run, tmp_path, signal_name):
    pattern, reference = straight_run
    config = training_config(pattern, str(tmp_path / "run"), max_steps=14, checkpoint_every=4)
    config.save(str(tmp_path / "c.json"))
    run = _train_py(tmp_path / "c.json")
    _wait_for_steps(run, tmp_path / "run", 5)  # past the checkpoint of step 4, before that of step 8
    run.send_signal(getattr(signal, signal_name))
    output = run.communicate(timeout=900)[0]
    step = max(_losses(tmp_path / "run"))
    assert 5 <= step < 14, output
    assert run.returncode == {"SIGINT": 130, "SIGTERM": 143}[signal_name], output
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"{signal_name} at step {step}: saved checkpoint") and "run the same command" in last
    assert (tmp_path / "run" / "checkpoints" / f"ckpt-{step}.index").exists()
    assert not list((tmp_path / "run" / "checkpoints").glob("*_temp*"))

    resumed = _train_py(tmp_path / "c.json")
    output = resumed.communicate(timeout=1800)[0]
    assert resumed.returncode == 0, output
    assert f"at step {step}" in output
    after = _losses(tmp_path / "run")
    assert sorted(after) == list(range(1, 15))
    np.testing.assert_allclose([after[s] for s in range(1, 15)], [reference[s] for s in range(1, 15)], rtol=1e-6)


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_losses_step_for_step(straight_run, tmp_path):
    pattern, reference = straight_run
    configs = {}
    for name in ("killed",):
        config = training_config(pattern, str(tmp_path / name), max_steps=14, checkpoint_every=4)
        configs[name] = tmp_path / f"{name}.json"
        config.save(str(configs[name]))

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
    after = _losses(tmp_path / "killed")
    assert sorted(after) == list(range(1, 15))
    np.testing.assert_allclose([after[s] for s in range(1, 15)], [reference[s] for s in range(1, 15)], rtol=1e-6)


def test_no_resume_refuses_a_folder_with_checkpoints(tmp_path, capsys):
    step = tf.Variable(3, dtype=tf.int64)
    tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(tmp_path / "run" / "checkpoints"), 1).save()
    config = training_config("unused-*.tfrecord", str(tmp_path / "run"))
    config.save(str(tmp_path / "c.json"))
    before = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert cli.run(train_script.main, ["--config", str(tmp_path / "c.json"), "--no-resume"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'run'} already holds checkpoints" in line, line
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoints"]  # no config.json written
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == before


def _fake_run_folder(tmp_path, **overrides):
    """A run folder with a checkpoint (step 3) and its config.json; returns the config file's path."""
    step = tf.Variable(3, dtype=tf.int64)
    tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(tmp_path / "run" / "checkpoints"), 1).save()
    config = training_config("unused-*.tfrecord", str(tmp_path / "run"), **overrides)
    config.data.seed = 7
    config.save(str(tmp_path / "run" / "config.json"))
    return tmp_path / "run" / "config.json"


def _one_error_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


def test_resuming_with_another_config_is_refused_with_the_differing_fields(tmp_path, capsys):
    saved = _fake_run_folder(tmp_path)
    before = saved.read_text()
    changed = training_config("unused-*.tfrecord", str(tmp_path / "run"), batch_size=4)
    changed.model.num_queries = 9
    changed.save(str(tmp_path / "changed.json"))
    assert cli.run(train_script.main, ["--config", str(tmp_path / "changed.json")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "train.batch_size: 2 -> 4" in line and "model.num_queries: " in line and " -> 9" in line, line
    assert "--allow_config_change" in line
    assert saved.read_text() == before  # the run folder's config is not rewritten

    # harmless changes pass, a longer run included; others pass only when asked for
    longer = training_config("unused-*.tfrecord", str(tmp_path / "run"), max_steps=60, log_every=5)
    assert check_resume_config(str(saved), longer, allow_change=False) == [
        "train.log_every: 1 -> 5",
        "train.max_steps: 6 -> 60",
    ]
    assert len(check_resume_config(str(saved), changed, allow_change=True)) == 2


def test_a_run_folder_past_a_shorter_max_steps_is_refused(tmp_path, capsys):
    saved = _fake_run_folder(tmp_path, max_steps=6)
    config = training_config("unused-*.tfrecord", str(tmp_path / "run"), max_steps=2)
    config.save(str(tmp_path / "short.json"))
    assert cli.run(train_script.main, ["--config", str(tmp_path / "short.json")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "already at step 3, past train.max_steps=2" in line, line
    assert json.loads(saved.read_text())["train"]["max_steps"] == 6


def test_unwritable_or_full_output_folder_is_one_line_before_training(tmp_path, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("")
    config = training_config("unused-*.tfrecord", str(tmp_path / "a_file" / "run"))
    config.save(str(tmp_path / "c.json"))
    assert cli.run(train_script.main, ["--config", str(tmp_path / "c.json")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"train.output_dir {tmp_path / 'a_file' / 'run'} cannot be written" in line, line

    pattern = write_synthetic_tfrecords(tmp_path / "data", num_images=2)
    config = training_config(pattern, str(tmp_path / "run"))
    config.save(str(tmp_path / "c.json"))
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))
    assert cli.run(train_script.main, ["--config", str(tmp_path / "c.json")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"train.output_dir {tmp_path / 'run'} has 1 MiB free but a run needs about" in line, line
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # nothing written, no ckpt-*_temp


def test_a_failed_checkpoint_write_leaves_no_partial_files(tmp_path):
    model = build_model(_tiny(2))
    step = tf.Variable(5, dtype=tf.int64)
    optimizer = build_optimizer(_tiny(2).train, model, learning_rate=1e-4)
    checkpoints = TrainingCheckpoints(str(tmp_path), model=model, optimizer=optimizer, step=step, keep=2)

    def full_disk(checkpoint_number):
        (tmp_path / "checkpoints" / "ckpt-5_temp").mkdir(parents=True)
        (tmp_path / "checkpoints" / "ckpt-5_temp" / "part-00000").write_bytes(b"x" * 10)
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device\n more detail")

    checkpoints.manager.save = full_disk
    with pytest.raises(OSError, match=r"cannot write checkpoint 5 in .* \(No space left on device\); free disk"):
        checkpoints.save()
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_empty_shards_are_one_line_naming_the_pattern(tmp_path, capsys):
    pattern = write_synthetic_tfrecords(tmp_path / "data", num_images=1)
    for shard in Path(pattern).parent.glob("train-*.tfrecord"):
        shard.write_bytes(b"")
    config = training_config(pattern, str(tmp_path / "run"))
    config.save(str(tmp_path / "c.json"))
    assert cli.run(train_script.main, ["--config", str(tmp_path / "c.json")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"data.train_files {pattern} yields no training examples" in line, line
    assert sorted(os.listdir(tmp_path / "run")) == []  # no config.json, metrics, checkpoints or summaries


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _Terminal(io.StringIO):
    def isatty(self):
        return True


SCALARS = {"loss_total": 12.3456789, "loss_ce": 1.0, "loss_mask": 0.5, "loss_dice": 0.25, "learning_rate": 1e-4}


def test_progress_in_a_log_is_one_plain_line_every_n_steps_with_a_moving_average_eta():
    stream, clock = io.StringIO(), _Clock()
    progress = Progress(1000, 1100, stream=stream, every_steps=20, every_seconds=1e9, warmup=2, window=10, clock=clock)
    for step in range(1001, 1101):
        clock.now += 100.0 if step == 1001 else (1.0 if step < 1050 else 3.0)  # slow first step (tracing)
        progress.update(step, SCALARS, 8.0)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split()[1] for line in lines] == [
        "1001/1100",
        "1020/1100",
        "1040/1100",
        "1060/1100",
        "1080/1100",
        "1100/1100",
    ]
    assert lines[0].endswith("ETA --")  # no estimate during warm-up
    assert "loss 12.3457 " in lines[1] and "lr 1.00e-04" in lines[1] and "8.0 images/s" in lines[1]
    assert lines[1].endswith("ETA 0:01:20")  # 80 steps x 1 s: the slow first step is left out
    assert lines[4].endswith("ETA 0:01:00")  # 20 steps x 3 s: the last 10 steps only

    terminal = _Terminal()
    progress = Progress(0, 10, stream=terminal, clock=clock)
    for step in range(1, 11):
        progress.update(step, SCALARS, 8.0)
    progress.clear()
    assert terminal.getvalue().count("\r\x1b[2K") == 10 and "[" in terminal.getvalue()
    assert terminal.getvalue().endswith("\n")


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


def test_stop_requests_remember_the_first_signal_and_stop_at_once_on_the_second():
    import signal as signals

    from training.loop import StopRequests

    before = signals.getsignal(signals.SIGINT)
    for name in ("SIGINT", "SIGTERM"):
        with StopRequests() as stop:
            os.kill(os.getpid(), getattr(signals, name))
            time.sleep(0.1)  # the handler runs between bytecodes of the main thread
            assert stop.signal_name == name
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), getattr(signals, name))
                time.sleep(0.1)
    assert signals.getsignal(signals.SIGINT) is before

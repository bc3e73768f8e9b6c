"""The criterion and the training step on JAX and PyTorch equal TensorFlow's (and so transformers').

One subprocess per backend (Keras picks its backend at import) computes, from files this process writes:
  - the criterion's losses on `test_criterion`'s problem with its explicit points: compared here with
    transformers' `Mask2FormerLoss` on the same points (1e-5 relative per term, as on TensorFlow);
  - one optimizer step (2 accumulation micro-batches) of a tiny model from the same initial weights, the
    same batch and the same random points: `KerasTrainStep` (jax.jit on JAX, eager on PyTorch) against
    TensorFlow's `TrainStep` here: losses within 1e-5 relative, updated weights within 1e-5 relative.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from losses import build_criterion
from model import build_model
from tests.helpers import tiny_config
from tests.test_criterion import assert_equal_to_reference, image_seeds, make_criterion, make_points, make_problem
from tests.test_criterion import reference_losses as transformers_losses
from training.optimizer import build_optimizer
from training.schedules import build_schedule
from training.train_step import TrainStep

ROOT = Path(__file__).resolve().parents[1]
ENV = {"JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
STEP_BATCH, STEP_SIZE, STEP_SLOTS = 4, 64, 4

RUN = """
import sys, numpy as np, keras
from keras import ops
from losses import SetPoints
from tests.test_backend_training import run_keras_step
from tests.test_criterion import make_criterion
problem = np.load(sys.argv[1], allow_pickle=True).item()
criterion = make_criterion("scipy")
criterion.dynamic_pairs = keras.backend.backend() != "jax"
points = [SetPoints(*(ops.convert_to_tensor(f) for f in p)) for p in problem["points"]]
losses = criterion(problem["outputs"], problem["targets"], points=points)
step = np.load(sys.argv[2], allow_pickle=True).item()
weights, step_losses = run_keras_step(sys.argv[3], step)
np.savez(sys.argv[4], losses=np.array({k: float(v) for k, v in losses.items()}), weights=np.array(weights, dtype=object),
         step_losses=np.array(step_losses))
"""


def step_config():
    config = tiny_config(num_decoder_layers=1, encoder_layers=1)
    config.data.max_instances = STEP_SLOTS
    config.loss.num_points = 64
    config.train.mixed_precision = "float32"
    config.train.accumulation_steps = 2
    return config


def step_batch(seed=0):
    rng = np.random.default_rng(seed)
    valid = np.zeros((STEP_BATCH, STEP_SLOTS), bool)
    for i, count in enumerate([2, 1, 4, 0]):  # includes an image without targets
        valid[i, :count] = True
    masks = np.zeros((STEP_BATCH, STEP_SLOTS, STEP_SIZE, STEP_SIZE), np.uint8)
    for i, j in zip(*np.nonzero(valid), strict=True):
        y, x = rng.integers(0, STEP_SIZE - 16, 2)
        masks[i, j, y : y + int(rng.integers(8, 16)), x : x + int(rng.integers(8, 16))] = 1
    return {
        "image": rng.uniform(0, 255, (STEP_BATCH, STEP_SIZE, STEP_SIZE, 3)).astype(np.float32),
        "masks": masks,
        "labels": rng.integers(0, 5, (STEP_BATCH, STEP_SLOTS)).astype(np.int32),
        "valid": valid,
    }


def fixed_points(criterion, points):
    """Makes `criterion.draw_points` return the rows of `points` (numpy, per image) for the seeds' images:
    seed (i, 0) stands for image i of the batch, whatever backend draws it."""

    def draw_points(seeds, num_sets):
        images = keras.ops.cast(seeds[:, 0], "int32")
        return [type(p)(*(keras.ops.take(f, images, axis=0) for f in p)) for p in points[:num_sets]]

    criterion.draw_points = draw_points


def run_keras_step(weights_path, step):
    """One step of `KerasTrainStep` on this process's backend; returns (trainable weights, losses)."""
    from training.keras_step import KerasTrainStep

    config = step_config()
    model = build_model(config)
    model(np.zeros((1, STEP_SIZE, STEP_SIZE, 3), np.float32))
    model.load_weights(weights_path)
    criterion = build_criterion(config, dynamic_pairs=keras.backend.backend() != "jax")
    fixed_points(criterion, step["points"])
    optimizer = build_optimizer(config.train, model, learning_rate=config.train.learning_rate)
    step_fn = KerasTrainStep(model, criterion, optimizer, build_schedule(config.train), accumulation_steps=2)
    step_fn._seeds = lambda step, count: np.array([[i, 0] for i in range(count)], np.int32)
    losses = step_fn(step["batch"], 0)
    step_fn.sync()
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables], losses


@pytest.fixture(scope="module")
def tensorflow_step(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backend_step")
    config = step_config()
    keras.utils.set_random_seed(0)
    model = build_model(config)
    model(np.zeros((1, STEP_SIZE, STEP_SIZE, 3), np.float32))
    weights_path = str(folder / "init.weights.h5")
    model.save_weights(weights_path)
    batch = step_batch()
    criterion = build_criterion(config)
    rows = min(model.num_queries, STEP_SLOTS)
    points = criterion.materialize(criterion.draw_points(image_seeds(3, STEP_BATCH), 2), rows)
    points = [type(p)(*(np.asarray(f) for f in p)) for p in points]
    fixed_points(criterion, points)
    step = tf.Variable(0, dtype=tf.int64)
    schedule = build_schedule(config.train)
    optimizer = build_optimizer(config.train, model, learning_rate=lambda: schedule(step))
    step_fn = TrainStep(
        model,
        criterion,
        optimizer,
        tf.distribute.get_strategy(),
        step,
        accumulation_steps=2,
        replica_batch_size=STEP_BATCH,
        seed=0,
        learning_rate=schedule,
    )
    step_fn._points = lambda step, first_image: criterion.draw_points(  # image i -> seed (i, 0)
        tf.stack([tf.stack([first_image + j, tf.constant(0, tf.int64)]) for j in range(step_fn.micro_batch_size)]), 2
    )
    losses = {k: float(v) for k, v in step_fn({k: tf.constant(v) for k, v in batch.items()}).items()}
    np.save(folder / "step.npy", np.array({"batch": batch, "points": points}, dtype=object))
    weights = [v.numpy() for v in model.trainable_variables]
    return folder, weights_path, weights, losses


@pytest.mark.parametrize("backend", ["torch", pytest.param("jax", marks=pytest.mark.slow)])
def test_criterion_and_step_equal_tensorflow_and_transformers(backend, tensorflow_step, tmp_path, monkeypatch):
    folder, weights_path, tf_weights, tf_losses = tensorflow_step
    outputs, targets = make_problem([3, 5])
    points = make_points(make_criterion("scipy"), batch=2)
    np.save(
        tmp_path / "problem.npy", np.array({"outputs": outputs, "targets": targets, "points": points}, dtype=object)
    )
    result = tmp_path / "result.npz"
    env = {**os.environ, **ENV, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", RUN, str(tmp_path / "problem.npy"), str(folder / "step.npy"), weights_path, str(result)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    saved = np.load(result, allow_pickle=True)

    # The criterion on this backend equals transformers' loss on the same points.
    assert_equal_to_reference(saved["losses"].item(), transformers_losses(outputs, targets, points, monkeypatch))

    # One optimizer step equals TensorFlow's: losses, and the updated weights.
    step_losses = saved["step_losses"].item()
    for key, value in tf_losses.items():
        np.testing.assert_allclose(step_losses[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
    weights = list(saved["weights"])
    difference = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(weights, tf_weights, strict=True)))
    relative = difference / np.sqrt(sum(np.sum(b**2) for b in tf_weights))
    worst = max(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12) for a, b in zip(weights, tf_weights, strict=True))
    print(f"{backend}: updated weights vs TensorFlow, relative {relative:.1e} (worst variable {worst:.1e})")
    assert relative < 1e-5


DATA_PARALLEL = """
import json, numpy as np, keras, jax
from losses import build_criterion
from model import build_model
from tests.test_backend_training import STEP_SIZE, step_batch, step_config
from training.keras_step import KerasTrainStep
from training.optimizer import build_optimizer
from training.schedules import build_schedule

def one_step(initial):
    config = step_config()
    model = build_model(config)
    model(np.zeros((1, STEP_SIZE, STEP_SIZE, 3), np.float32))
    model.set_weights(initial)
    optimizer = build_optimizer(config.train, model, learning_rate=config.train.learning_rate)
    step = KerasTrainStep(model, build_criterion(config, dynamic_pairs=False), optimizer,
                          build_schedule(config.train), accumulation_steps=2, seed=3)
    batch = step_batch()
    image = step._placed(batch, step._seeds(0, len(batch["image"])))[0]["image"]
    devices = len(image.sharding.device_set) if isinstance(image, jax.Array) else 1
    losses = step(batch, 0)
    step.sync()
    return [np.asarray(w) for w in model.get_weights()], losses, devices

keras.utils.set_random_seed(0)
reference = build_model(step_config())
reference(np.zeros((1, STEP_SIZE, STEP_SIZE, 3), np.float32))
initial = reference.get_weights()
one = one_step(initial)
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices()))
two = one_step(initial)
difference = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(one[0], two[0], strict=True)))
print("RESULT " + json.dumps({"devices": [one[2], two[2]], "losses": [one[1], two[1]],
      "relative": float(difference / np.sqrt(sum(np.sum(a ** 2) for a in one[0])))}))
"""


@pytest.mark.slow
def test_jax_data_parallel_step_equals_one_device():
    """keras.distribution.DataParallel on JAX (2 CPU devices): the batch is split over both, and one step
    (2 micro-batches) gives the one-device step's losses and updated weights within 1e-5 relative."""
    env = {**os.environ, **ENV, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    run = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["devices"] == [1, 2]
    one, two = result["losses"]
    for key, value in one.items():
        np.testing.assert_allclose(two[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
    print(f"data parallel vs one device: updated weights relative {result['relative']:.1e}")
    assert result["relative"] < 1e-5

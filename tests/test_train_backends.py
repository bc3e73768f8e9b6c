"""train.py's loop on PyTorch and JAX (on two CPU devices, data parallel): it trains, resumes exactly, and its
model evaluates alike on TensorFlow.

One subprocess per backend (Keras picks its backend at import) trains a tiny model on synthetic TFRecords for
4 steps, trains the same run again as 2 steps + a resumed 2, and evaluates the first run's `model.keras` with
test_map.py; this process (TensorFlow) evaluates the same file and compares the metrics.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import test_map
from tests.synthetic_coco import write_synthetic_tfrecords

ROOT = Path(__file__).resolve().parents[1]
ENV = {"JAX_PLATFORMS": "cpu", "OMP_WAIT_POLICY": "PASSIVE"}

RUN = """
import json, sys
from pathlib import Path
import numpy as np
import test_map
from tests.synthetic_coco import training_config
from training.loop import train

data, folder = Path(sys.argv[1]), Path(sys.argv[2])
pattern = str(data / "records" / "train-*.tfrecord")
full = train(training_config(pattern, str(folder / "full"), max_steps=4))
train(training_config(pattern, str(folder / "part"), max_steps=2))
resumed = train(training_config(pattern, str(folder / "part"), max_steps=4))
weights = lambda result: [np.asarray(w) for w in result.model.get_weights()]
same = all(np.array_equal(a, b) for a, b in zip(weights(full), weights(resumed), strict=True))
test_map.main(["--model", str(folder / "full" / "model.keras"), "--images", str(data / "images"),
               "--gt", str(data / "instances.json"), "--output", str(folder / "metrics.json")])
print("RESULT " + json.dumps({
    "full": [h["loss_total"] for h in full.history], "resumed": [h["loss_total"] for h in resumed.history],
    "status": [full.status, resumed.status], "weights_equal": same, "checkpoint": resumed.last_checkpoint}))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train_backends")
    write_synthetic_tfrecords(folder, num_images=4)
    return folder


def _flat(metrics, prefix=""):
    for key, value in metrics.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("backend", ["torch", pytest.param("jax", marks=pytest.mark.slow)])
def test_trains_resumes_and_evaluates_on_tensorflow(backend, data, tmp_path):
    env = {**os.environ, **ENV, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    if backend == "jax":  # two CPU devices: train.py splits each batch over them (keras.distribution.DataParallel)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    run = subprocess.run(
        [sys.executable, "-c", RUN, str(data), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["status"] == ["finished", "finished"]
    devices = "2 devices (DataParallel)" if backend == "jax" else "1 device"
    assert f"{backend}, {devices}" in run.stdout + run.stderr
    assert result["checkpoint"].endswith("ckpt-4.npz")
    # Resuming continues exactly: the last two steps' losses and the final weights of 2 + 2 steps are 4 steps'.
    assert result["resumed"] == result["full"][2:], result
    assert result["weights_equal"]
    assert all(np.isfinite(result["full"]))

    # The model trained on this backend gives TensorFlow the metrics it gives on its own backend.
    ours = tmp_path / "metrics_tensorflow.json"
    test_map.main(
        [
            "--model",
            str(tmp_path / "full" / "model.keras"),
            "--images",
            str(data / "images"),
            "--gt",
            str(data / "instances.json"),
            "--output",
            str(ours),
        ]
    )
    theirs = dict(_flat(json.loads((tmp_path / "metrics.json").read_text())))
    on_tensorflow = dict(_flat(json.loads(ours.read_text())))
    assert theirs.keys() == on_tensorflow.keys() and len(theirs) >= 24
    for key, value in theirs.items():
        assert on_tensorflow[key] == pytest.approx(value, abs=1e-4), key

"""One `.keras` file, three backends: TensorFlow, PyTorch and JAX give the same outputs (1e-4)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from model import build_model
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import sys, numpy as np, keras
sys.path.insert(0, sys.argv[1])
import model  # registers the layers
m = keras.saving.load_model(sys.argv[2])
out = m(np.load(sys.argv[3]))
arrays = {"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"],
          "aux_4_pred_masks": out["aux_outputs"][4]["pred_masks"]}
np.savez(sys.argv[4], **{k: keras.ops.convert_to_numpy(v) for k, v in arrays.items()}, backend=keras.backend.backend())
"""


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backends")
    model = build_model(tiny_config())
    rng = np.random.default_rng(0)
    for w in model.weights:  # non-trivial weights everywhere, zero-initialised kernels included
        w.assign(w.numpy() + rng.normal(0, 0.05, w.shape).astype(w.dtype))
    images = rng.uniform(0, 255, (2, 64, 96, 3)).astype("float32")
    model.save(tmp / "tiny.keras")
    np.save(tmp / "images.npy", images)
    out = model(images)
    expected = {
        "pred_logits": out["pred_logits"].numpy(),
        "pred_masks": out["pred_masks"].numpy(),
        "aux_4_pred_masks": out["aux_outputs"][4]["pred_masks"].numpy(),
    }
    return tmp, expected


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_same_keras_file_same_outputs_on_other_backends(saved_model, backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    tmp, expected = saved_model
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
    result = tmp / f"{backend}.npz"
    subprocess.run(
        [sys.executable, "-c", RUN, str(ROOT), str(tmp / "tiny.keras"), str(tmp / "images.npy"), str(result)],
        env=env,
        check=True,
        capture_output=True,
    )
    got = np.load(result)
    assert str(got["backend"]) == backend
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, atol=1e-4, rtol=0, err_msg=name)
    assert keras.backend.backend() == "tensorflow"

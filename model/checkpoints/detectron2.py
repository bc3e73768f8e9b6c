"""detectron2 `.pkl` checkpoints, read safely.

    state = read_detectron2_checkpoint("model_final_3c8ec9.pkl")   # name -> numpy array
    report = load_detectron2_checkpoint(model, "model_final_3c8ec9.pkl")

A detectron2 `.pkl` is a plain pickle (`{"model": {name: numpy array}}`). A pickle can run code, so
it is read by an unpickler that accepts containers and numpy arrays only (`RestrictedUnpickler`, which
the torch reader extends). Every name the official loader accepts is accepted (`names.LEGACY_NAMES`).
"""

from __future__ import annotations

import io
import os
import pickle
import re

import numpy as np

from model.checkpoints.errors import CheckpointError, UnsafeCheckpointError
from model.checkpoints.names import LoadReport, canonical_names, load_detectron2_state
from model_zoo import MODEL_ZOO

_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}
# Protocol 2 writes bytes (an array's data) as `_codecs.encode(text, "latin1")`; encoding a string runs no code.
_SAFE_GLOBALS = _NUMPY_GLOBALS | {("collections", "OrderedDict"), ("_codecs", "encode")}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a detectron2 checkpoint needs; anything else raises."""

    def find_class(self, module, name):
        # numpy 1.x pickles name `numpy.core.*`; numpy 2 moved it to `numpy._core.*`.
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core.") :]
        if (module, name) not in _SAFE_GLOBALS:
            raise UnsafeCheckpointError(
                f"refusing to load: the pickle asks for `{module}.{name}`, which is neither a container nor a numpy "
                "array (a detectron2 checkpoint never does); the file is not a detectron2 checkpoint or was tampered with"
            )
        return super().find_class(module, name)


def read_detectron2_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Reads a detectron2 `.pkl` (model-zoo `model_final_*.pkl` or ImageNet `R-50.pkl`) safely.

    Returns a flat dict name -> numpy array with detectron2 model names (`backbone.res2.0.conv1.weight`, ...).
    ImageNet backbone files name tensors without the `backbone.` prefix; it is added.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; pass the .pkl file inside it")
    if not os.path.isfile(path):
        raise CheckpointError(
            f"checkpoint {path} does not exist; check the path, or pass a model-zoo name instead (it is downloaded "
            "once; `python -m tools.convert_detectron2_checkpoint --list` lists them)"
        )
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        raise CheckpointError(
            f"{path} is a Keras weights file (HDF5), not a detectron2 pickle; it needs no conversion: "
            "pass it to test.py / test_map.py as --weights with the --config it was trained with"
        )
    if data[:2] == b"PK" and path.endswith(".keras"):
        raise CheckpointError(f"{path} is a saved .keras model, not a detectron2 pickle; pass it to test.py as --model")
    if data[:2] == b"PK":
        raise CheckpointError(
            f"{path} is a PyTorch zip checkpoint (.pth), not a detectron2 pickle; use the model zoo's .pkl file"
        )
    try:
        content = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except Exception as e:  # truncated or not a pickle at all
        raise CheckpointError(
            f"{path} is not a readable detectron2 pickle ({type(e).__name__}: {e}); download it again"
        ) from None
    state = content if isinstance(content, dict) else None
    if state is not None:
        state = state.get("model", state.get("blobs", state))  # Caffe2 / Detectron1 files hold "blobs"
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} holds a {type(content).__name__}, not a dict of tensors; it is not a detectron2 checkpoint"
        )
    caffe2 = sorted(n for n in state if _CAFFE2_NAME.match(str(n)))
    if caffe2:
        raise CheckpointError(
            f"{path} holds Caffe2-named MSRA ResNet weights ({', '.join(caffe2[:2])}, ...), which expect BGR "
            "input and put the stride in the 1x1 conv; Mask2Former starts from the torchvision R-50 "
            f"(model-zoo name R-50: {MODEL_ZOO['R-50']})"
        )
    tensors = {}
    for name, value in state.items():
        if not isinstance(value, np.ndarray | np.generic):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not a numpy array")
        value = np.asarray(value)
        if name.startswith("stem.") or name.startswith("res"):
            name = "backbone." + name
        tensors[name] = value
    return canonical_names(tensors)


# Caffe2 / MSRA ResNet names: conv1_w, res_conv1_bn_s, res2_0_branch2a_w, fc1000_b ...
_CAFFE2_NAME = re.compile(r"conv1_w$|res_conv1_bn_|res\d+_\d+_branch|fc1000_")


def load_detectron2_checkpoint(model, path: str, **kwargs) -> LoadReport:
    """Reads `path` safely and loads it into `model`; see `names.load_detectron2_state` for the options."""
    try:
        return load_detectron2_state(model, read_detectron2_checkpoint(path), **kwargs)
    except CheckpointError as e:
        if str(e).startswith(path):
            raise
        raise CheckpointError(f"{path}: {e}") from None

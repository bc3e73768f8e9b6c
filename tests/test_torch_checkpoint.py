"""ImageNet Swin weights without torch: Microsoft's `.pth` (zip and legacy `torch.save`) and the d2
pickle of torch tensors (`convert-pretrained-swin-model-to-d2.py`), all written by real torch here and
read in a subprocess where importing torch fails; malicious files are refused and run nothing."""

import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from model import build_model
from model.checkpoints import to_detectron2_state
from tests.helpers import tiny_swin_config

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter where `import torch` raises; prints one JSON line of results.
WITHOUT_TORCH = """
import json, sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
import numpy as np
from model.checkpoints import CheckpointError
from model.checkpoints import read_torch_checkpoint, load_imagenet_backbone
results = {}
for path in sys.argv[2:]:
    try:
        state = read_torch_checkpoint(path)
        np.savez(path + ".npz", **state)
        results[path] = "read"
    except CheckpointError as e:
        results[path] = f"{type(e).__name__}: {e}"
if sys.argv[1] != "-":
    from model import build_model
    from tests.helpers import tiny_swin_config
    model = build_model(tiny_swin_config())
    report = load_imagenet_backbone(model, sys.argv[1])
    np.savez(sys.argv[1] + ".loaded.npz", **{w.path.split("backbone/")[1]: w.numpy() for w in model.backbone.weights})
    results["report"] = str(report)
results["torch_imported"] = "torch" in sys.modules
print(json.dumps(results))
"""


def _run_without_torch(backbone_file, *paths):
    import json

    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, str(backbone_file), *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results.pop("torch_imported") is False
    return results


def _microsoft_swin_state(model):
    """What Microsoft's ImageNet `.pth` holds for this architecture: names without `backbone.`, the
    fixed buffers, a final `norm` and a classifier `head`, and no `norm0..3`."""
    state = {}
    for name, value in to_detectron2_state(model).items():
        if name.startswith("backbone.") and not name.startswith("backbone.norm"):
            state[name[len("backbone.") :]] = torch.from_numpy(np.ascontiguousarray(value))
    w = model.backbone.window_size
    for i, blocks in enumerate(model.backbone.stages):
        for j, _ in enumerate(blocks):
            state[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = torch.randint(0, 5, (w * w, w * w))
            if j % 2:
                state[f"layers.{i}.blocks.{j}.attn_mask"] = torch.zeros(4, w * w, w * w)
    channels = model.backbone.embed_dim * 8
    state["norm.weight"], state["norm.bias"] = torch.ones(channels), torch.zeros(channels)
    state["head.weight"], state["head.bias"] = torch.randn(10, channels), torch.randn(10)
    # A non-contiguous and a half-precision tensor exercise strides and dtypes of the reader.
    state["head.weight_t"] = torch.randn(channels, 10).t()
    state["head.half"] = torch.randn(3, 5, dtype=torch.float16)
    return state


def _write_swin_files(tmp_path):
    """A tiny Swin's backbone as Microsoft's `.pth` (zip and legacy) and as the d2 pickle:
    (source model, state, {kind: path})."""
    source = build_model(tiny_swin_config())
    rng = np.random.default_rng(0)
    for w in source.backbone.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    state = _microsoft_swin_state(source)
    files = {
        "zip": tmp_path / "swin_tiny_patch4_window3.pth",
        "legacy": tmp_path / "swin_legacy.pth",
        "d2": tmp_path / "swin_tiny_patch4_window3.pkl",
    }
    torch.save({"model": state}, files["zip"])
    torch.save({"model": state}, files["legacy"], _use_new_zipfile_serialization=False)
    # tools/convert-pretrained-swin-model-to-d2.py: torch.load(...)["model"], then a plain pickle.dump.
    obj = torch.load(files["zip"], map_location="cpu")["model"]
    with open(files["d2"], "wb") as f:
        pickle.dump({"model": obj, "__author__": "third_party", "matching_heuristics": True}, f)
    return source, state, files


def _write_bad_files(tmp_path):
    """Malicious pickles (`.pth` zip and legacy, plain pickle) and a malformed tensor: (marker, paths)."""
    marker = tmp_path / "pwned"
    payload = {"model": {"x": torch.zeros(2)}, "payload": _RunsCode(marker)}
    paths = [tmp_path / "evil.pth", tmp_path / "evil_legacy.pth", tmp_path / "evil.pkl", tmp_path / "oversized.pkl"]
    torch.save(payload, paths[0])
    torch.save(payload, paths[1], _use_new_zipfile_serialization=False)
    paths[2].write_bytes(pickle.dumps(payload))
    with warnings.catch_warnings():  # TypedStorage is deprecated in torch, still what pickles of tensors use
        warnings.simplefilter("ignore", UserWarning)
        paths[3].write_bytes(pickle.dumps({"model": {"x": _PastItsStorage()}}))
    return marker, paths


@pytest.fixture(scope="module")
def read_without_torch(tmp_path_factory):
    """The Swin files and the bad files, all read in one fresh interpreter without torch (its start-up,
    TensorFlow's, is most of the time): (source, state, files, marker, bad paths, results)."""
    tmp_path = tmp_path_factory.mktemp("without_torch")
    source, state, files = _write_swin_files(tmp_path)
    marker, paths = _write_bad_files(tmp_path)
    results = _run_without_torch(files["d2"], *files.values(), *paths)
    return source, state, files, marker, paths, results


def test_microsoft_pth_and_d2_pickle_load_without_torch(read_without_torch):
    source, state, files, _, _, results = read_without_torch
    assert all(results[str(p)] == "read" for p in files.values()), results
    for path in files.values():
        read = np.load(str(path) + ".npz")
        assert sorted(read.files) == sorted(state)
        for name, tensor in state.items():
            assert read[name].dtype == tensor.numpy().dtype, name
            np.testing.assert_array_equal(read[name], tensor.numpy(), err_msg=f"{path.name}: {name}")

    # Loaded into the backbone: every tensor but norm0..3, which keep their initial ones / zeros.
    print(results["report"])
    assert "unexpected, not used (14)" in results["report"] and "head.* (4)" in results["report"]
    loaded = np.load(str(files["d2"]) + ".loaded.npz")
    expected = {w.path.split("backbone/")[1]: w.numpy() for w in source.backbone.weights}
    assert sorted(loaded.files) == sorted(expected)
    for path, value in loaded.items():
        if re.fullmatch(r"norm\d/(gamma|beta)", path):
            init = np.ones_like(value) if path.endswith("gamma") else np.zeros_like(value)
            np.testing.assert_array_equal(value, init, err_msg=path)
        else:
            np.testing.assert_array_equal(value, expected[path], err_msg=path)


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _PastItsStorage:
    """A tensor whose size reaches past its 4-element storage (reading it would read foreign memory)."""

    def __reduce__(self):
        from collections import OrderedDict

        return (torch._utils._rebuild_tensor_v2, (torch.zeros(4).storage(), 0, (1000,), (1,), False, OrderedDict()))


def test_malicious_and_malformed_files_are_refused_and_run_nothing(read_without_torch):
    _, _, _, marker, paths, results = read_without_torch
    for path in paths[:3]:
        assert results[str(path)].startswith("UnsafeCheckpointError"), results[str(path)]
        assert "system" in results[str(path)] and path.name in results[str(path)]
    assert results[str(paths[3])].startswith("CheckpointError") and "past its storage" in results[str(paths[3])]
    assert not marker.exists()


def test_imagenet_weights_of_another_architecture_are_one_clear_error(tmp_path):
    from model.checkpoints import CheckpointError, load_imagenet_backbone

    source = build_model(tiny_swin_config(swin_embed_dim=16, swin_num_heads=(2, 2, 4, 4)))
    path = tmp_path / "swin_other.pth"
    torch.save({"model": _microsoft_swin_state(source)}, path)
    model = build_model(tiny_swin_config())
    before = [w.numpy() for w in model.weights]
    with pytest.raises(CheckpointError, match=r"swin_other\.pth does not fit the model's SwinTransformer backbone"):
        load_imagenet_backbone(model, str(path))
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights, strict=True))


def test_training_starts_a_swin_from_microsofts_pth(tmp_path):
    """`train.backbone_weights` with a Swin model reads Microsoft's `.pth` (the path train.py takes)."""
    from training.initialization import load_backbone

    source = build_model(tiny_swin_config())
    rng = np.random.default_rng(1)
    for w in source.backbone.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    path = tmp_path / "swin_tiny.pth"
    torch.save({"model": _microsoft_swin_state(source)}, path)

    target = build_model(tiny_swin_config())
    summary = load_backbone(target, str(path))
    assert summary.startswith(f"backbone from {path}:"), summary
    for a, b in zip(source.backbone.weights, target.backbone.weights, strict=True):
        if not re.search(r"norm\d/", a.path):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)

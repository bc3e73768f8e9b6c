"""detectron2 checkpoints: safe unpickling, every pickle flavour, mismatch reports, converter, download cache."""

import contextlib
import importlib
import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from model import build_model
from model.checkpoints import (
    CheckpointError,
    UnsafeCheckpointError,
    download,
    infer_model_config,
    load_detectron2_state,
    read_detectron2_checkpoint,
    to_detectron2_state,
)
from model_zoo import ZOO_MODELS
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_PKL = ROOT / "tests" / "golden" / "tiny_detectron2.pkl"


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": np.zeros(2)}, "payload": _RunsCode(marker)}))
    with pytest.raises(UnsafeCheckpointError, match=r"model_final\.pkl.*(posix|os)\.system.*tampered"):
        read_detectron2_checkpoint(str(path))
    assert not marker.exists()


@contextlib.contextmanager
def _numpy1_names():
    """Pickle as numpy 1.x did: its array/scalar reconstructors lived in `numpy.core.*` (numpy 2: `numpy._core.*`)."""
    from numpy._core import multiarray, numeric

    functions = (multiarray._reconstruct, multiarray.scalar, numeric._frombuffer)
    originals = [f.__module__ for f in functions]
    try:
        for f, module in zip(functions, originals, strict=True):
            f.__module__ = module.replace("numpy._core", "numpy.core")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for f, module in zip(functions, originals, strict=True):
            f.__module__ = module


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("numpy1", [False, True])
def test_pickles_of_every_protocol_and_numpy_version_load(tmp_path, protocol, numpy1):
    state = {
        "backbone.stem.conv1.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
        "scalar": np.float64(3.5),
    }
    content = {"model": state, "__author__": "test", "matching_heuristics": True}
    with _numpy1_names() if numpy1 else contextlib.nullcontext():
        data = pickle.dumps(content, protocol=protocol)
    assert (b"numpy.core.multiarray" in data) == numpy1
    path = tmp_path / "ckpt.pkl"
    path.write_bytes(data)
    loaded = read_detectron2_checkpoint(str(path))
    np.testing.assert_array_equal(loaded["backbone.stem.conv1.weight"], state["backbone.stem.conv1.weight"])
    assert loaded["scalar"] == 3.5


def test_imagenet_backbone_names_get_the_backbone_prefix(tmp_path):
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": np.zeros(1), "res2.0.conv1.weight": np.zeros(1)}}))
    assert set(read_detectron2_checkpoint(str(path))) == {"backbone.stem.conv1.weight", "backbone.res2.0.conv1.weight"}


def test_unreadable_files_get_one_clear_sentence(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="does not exist; check the path, or pass a model-zoo name") as missing:
        read_detectron2_checkpoint(str(tmp_path / "missing.pkl"))
    command = re.search(r"`python -m ([\w.]+) (--\w+)`", str(missing.value))
    assert command, f"the hint names no command that lists the model zoo: {missing.value}"
    module, flag = command.groups()
    assert importlib.import_module(module).main([flag]) == 0
    listed = capsys.readouterr().out
    assert all(f"`{name}`" in listed for name in ZOO_MODELS)  # it lists the names the hint speaks of
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(GOLDEN_PKL.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pkl is not a readable detectron2 pickle"):
        read_detectron2_checkpoint(str(truncated))
    zipped = tmp_path / "model.pth"
    zipped.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(CheckpointError, match="PyTorch zip checkpoint"):
        read_detectron2_checkpoint(str(zipped))


def test_missing_wrong_and_unexpected_tensors_are_named(tmp_path):
    model = build_model(tiny_config())
    state = read_detectron2_checkpoint(str(GOLDEN_PKL))
    before = model.transformer_decoder.query_feat.numpy().copy()
    broken = dict(state)
    del broken["sem_seg_head.predictor.decoder_norm.bias"]
    broken["sem_seg_head.predictor.class_embed.weight"] = np.zeros((9, 32), np.float32)
    broken["sem_seg_head.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError) as error:
        load_detectron2_state(model, broken)
    message = str(error.value)
    assert "missing from the checkpoint (1): sem_seg_head.predictor.decoder_norm.bias" in message
    assert "sem_seg_head.predictor.class_embed.weight is (9, 32) in the checkpoint, the model needs (6, 32)" in message
    assert "sem_seg_head.extra.weight" in message
    np.testing.assert_array_equal(model.transformer_decoder.query_feat.numpy(), before)  # nothing loaded

    # Fine-tuning on other classes: skip the class head, load everything else.
    del broken["sem_seg_head.extra.weight"]
    report = load_detectron2_state(
        model,
        broken | {"sem_seg_head.predictor.decoder_norm.bias": state["sem_seg_head.predictor.decoder_norm.bias"]},
        skip_prefixes=["sem_seg_head.predictor.class_embed"],
    )
    assert report.skipped == ["sem_seg_head.predictor.class_embed.weight", "sem_seg_head.predictor.class_embed.bias"]
    np.testing.assert_array_equal(
        model.transformer_decoder.query_feat.numpy(), state["sem_seg_head.predictor.query_feat.weight"]
    )


def test_export_inverts_load_and_covers_every_weight():
    model = build_model(tiny_config())
    state = read_detectron2_checkpoint(str(GOLDEN_PKL))
    report = load_detectron2_state(model, state)
    assert report.ok and report.unexpected == []
    exported = to_detectron2_state(model)
    assert set(exported) == set(state) - {"criterion.empty_weight"}
    for name, value in exported.items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    n_model = sum(int(np.prod(w.shape)) for w in model.weights)
    assert n_model == sum(v.size for v in exported.values())  # every Keras weight has a detectron2 name


def test_infer_model_config_reads_architecture_from_shapes():
    inferred = infer_model_config(read_detectron2_checkpoint(str(GOLDEN_PKL)), num_heads=4)
    expected = tiny_config().model
    for key, value in inferred.items():
        assert value == getattr(expected, key), key


def test_converter_writes_a_self_contained_keras_file(tmp_path, monkeypatch):
    """The command line's `main` (in this process: a fresh one costs TensorFlow's start-up; tests/test_cli.py
    starts the script itself, with --help)."""
    import keras

    import cli
    from tools.convert_detectron2_checkpoint import main

    out = tmp_path / "tiny.keras"
    monkeypatch.chdir(tmp_path)
    assert cli.run(main, [str(GOLDEN_PKL), str(out), "--num-heads", "4"]) == 0

    golden = np.load(ROOT / "tests" / "golden" / "tiny_reference_outputs.npz")
    network = keras.saving.load_model(str(out))  # the architecture comes from the file (layers: `import model`)
    masks = keras.ops.convert_to_numpy(network(golden["images"])["pred_masks"])
    np.testing.assert_allclose(masks, golden["pred_masks"], atol=1e-4)


def test_download_caches_and_checks_the_sha256(tmp_path):
    source = tmp_path / "model_final_abc.pkl"
    source.write_bytes(GOLDEN_PKL.read_bytes())
    cache = tmp_path / "cache"
    path = download(source.as_uri(), cache_dir=str(cache))
    assert Path(path).read_bytes() == source.read_bytes() and Path(path + ".sha256").exists()
    source.unlink()  # a second call uses the cache
    assert download(f"file://{tmp_path}/model_final_abc.pkl", cache_dir=str(cache)) == path
    with open(path, "r+b") as f:  # a corrupted cache entry is caught
        f.write(b"garbage")
    with pytest.raises(CheckpointError, match="sha256"):
        download(f"file://{tmp_path}/model_final_abc.pkl", cache_dir=str(cache))
    source.write_bytes(b"other bytes")
    with pytest.raises(CheckpointError, match="expected 0000"):
        download(source.as_uri(), cache_dir=str(tmp_path / "cache2"), sha256="0000")
    assert not list((tmp_path / "cache2").rglob("*.pkl"))  # nothing half-written is left
    with pytest.raises(ValueError, match="model-zoo name"):
        download("not_a_model")


def test_keras_files_and_folders_given_as_detectron2_checkpoints_say_what_they_are(tmp_path):
    """A .weights.h5, a .keras or a folder passed to the converter: the message names the file and what to do
    (not "download it again" or "does not exist")."""
    (tmp_path / "model.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"model\.weights\.h5 is a Keras weights file .* needs no conversion"):
        read_detectron2_checkpoint(str(tmp_path / "model.weights.h5"))
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"model\.keras is a saved \.keras model.* as --model"):
        read_detectron2_checkpoint(str(tmp_path / "model.keras"))
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        read_detectron2_checkpoint(str(tmp_path))


def test_converter_command_line_on_a_keras_file_or_folder_is_one_line_and_writes_nothing(tmp_path, capsys):
    """tools/convert_detectron2_checkpoint.py given what is not a detectron2 checkpoint: exit 2, one line
    naming the file and what to do, no output file."""
    import cli
    from tools.convert_detectron2_checkpoint import main

    (tmp_path / "model.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    (tmp_path / "folder").mkdir()
    cases = [
        (tmp_path / "model.weights.h5", "model.weights.h5 is a Keras weights file"),
        (tmp_path / "folder", "is a folder, not a file"),
        (tmp_path / "missing.pkl", "missing.pkl does not exist"),
    ]
    for source, message in cases:
        assert cli.run(main, [str(source), str(tmp_path / "out.keras")]) == 2, source
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [err] and err.startswith("error: ") and message in err, err
        assert "download it again" not in err and not (tmp_path / "out.keras").exists()

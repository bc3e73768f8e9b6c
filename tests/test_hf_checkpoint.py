"""Hugging Face hub checkpoints: a directory written by `transformers`' `save_pretrained` loads and matches."""

import json
import sys

import numpy as np
import pytest

pytest.importorskip("transformers")

from inference.loading import ModelLoadError, load_model  # noqa: E402
from model.checkpoints import (  # noqa: E402
    CheckpointError,  # noqa: E402
    load_hf_checkpoint,
    read_hf_checkpoint,
)
from tests.helpers import tiny_config  # noqa: E402
from tests.hf_reference import build_reference, run_ours, run_reference  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(directory, images, reference outputs) of a small random HF Mask2Former with a ResNet backbone."""
    images = np.random.default_rng(0).uniform(0, 255, (1, 96, 128, 3)).astype(np.float32)
    hf = build_reference("tiny", seed=0, calibration_images=images)
    directory = tmp_path_factory.mktemp("hf") / "mask2former-tiny"
    hf.save_pretrained(str(directory))  # model.safetensors + config.json, as on the hub
    return directory, images, run_reference(hf, images)


def test_hf_directory_loads_with_its_architecture_and_matches(saved):
    directory, images, reference = saved
    assert (directory / "model.safetensors").is_file()
    model = load_hf_checkpoint(str(directory))
    assert (model.num_classes, model.num_queries, model.num_decoder_layers) == (5, 7, 9)
    ours = run_ours(model, images)
    for name, expected in reference.items():
        np.testing.assert_allclose(ours[name], expected, atol=1e-4, rtol=0, err_msg=name)
    print(
        f"\nHF safetensors -> ours: max |diff| {max(float(np.abs(ours[n] - reference[n]).max()) for n in reference):.2e}"
    )


def test_hf_directory_through_test_py_loading(saved):
    directory, images, reference = saved
    model = load_model(tiny_config(), weights_path=str(directory))
    np.testing.assert_allclose(run_ours(model, images)["pred_masks"], reference["pred_masks"], atol=1e-4, rtol=0)
    with pytest.raises(
        ModelLoadError,
        match=r"mask2former-tiny has num_classes=5, num_queries=7 but the config says 80, 100; pass --set",
    ):
        load_model(tiny_config(num_classes=80, num_queries=100), weights_path=str(directory))


def test_reading_needs_no_torch(saved, monkeypatch):
    directory, _, _ = saved
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
    state, fields = read_hf_checkpoint(str(directory))
    assert "sem_seg_head.predictor.query_feat.weight" in state and fields["num_classes"] == 5


def test_bad_hf_directories_are_one_sentence(saved, tmp_path):
    directory, _, _ = saved
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        read_hf_checkpoint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_hf_checkpoint(str(tmp_path))
    config = json.loads((directory / "config.json").read_text())
    config["backbone_config"]["model_type"] = "convnext"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="backbone 'convnext' is not supported"):
        read_hf_checkpoint(str(tmp_path))

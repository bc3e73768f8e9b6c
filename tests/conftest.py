"""Shared test setup: quiet TensorFlow, the external test data folder, and
session fixtures for artefacts that are expensive to build and only read by tests."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]

# Real external files with reference results (never copied into the repository).
SHARED_TESTDATA = Path(os.environ.get("MASK2FORMER_TESTDATA", ROOT.parent / "shared" / "testdata"))

GOLDEN_PKL = "tests/golden/tiny_detectron2.pkl"  # relative to ROOT, where pytest runs


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """The golden tiny checkpoint (5 classes) as a converted `tiny.keras` and as `tiny.weights.h5`, with its
    config `tiny.json` (test sizes 64 / 128). Built once per session; tests read it and copy what they change."""
    from model import build_model
    from model.checkpoints import load_detectron2_checkpoint
    from tests.helpers import tiny_config
    from tools.convert_detectron2_checkpoint import convert

    folder = tmp_path_factory.mktemp("tiny_model")
    config = tiny_config()
    config.data.min_size_test, config.data.max_size_test = 64, 128
    config.save(str(folder / "tiny.json"))
    convert(GOLDEN_PKL, str(folder / "tiny.keras"), num_heads=config.model.num_heads)
    network = build_model(config)
    load_detectron2_checkpoint(network, GOLDEN_PKL)
    network.save_weights(str(folder / "tiny.weights.h5"))
    return folder

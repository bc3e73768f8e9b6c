"""The model zoo: names, URLs and presets agree; downloads check the md5 prefix in the file name."""

import functools
import hashlib
import http.server
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from config import Mask2FormerConfig
from model.checkpoints import CheckpointError, download
from model_zoo import MODEL_ZOO, ZOO_MODELS
from tools.convert_detectron2_checkpoint import zoo_table

ROOT = Path(__file__).resolve().parents[1]

# Read from the official file names and configs (configs/<dataset>/<task>-segmentation/...yaml).
CLASSES = {
    ("coco", "instance"): 80,
    ("coco", "panoptic"): 133,
    ("ade20k", "semantic"): 150,
    ("ade20k", "instance"): 100,
    ("ade20k", "panoptic"): 150,
    ("cityscapes", "semantic"): 19,
    ("cityscapes", "instance"): 8,
    ("cityscapes", "panoptic"): 19,
}
BACKBONES = {  # URL token -> (backbone, fields)
    "R50": ("resnet", {"backbone_stage_blocks": (3, 4, 6, 3)}),
    "R101": ("resnet", {"backbone_stage_blocks": (3, 4, 23, 3)}),
    "swin_tiny": ("swin", {"swin_embed_dim": 96, "swin_depths": (2, 2, 6, 2), "swin_window_size": 7}),
    "swin_small": ("swin", {"swin_embed_dim": 96, "swin_depths": (2, 2, 18, 2), "swin_window_size": 7}),
    "swin_base": ("swin", {"swin_embed_dim": 128, "swin_num_heads": (4, 8, 16, 32), "swin_window_size": 12}),
    "swin_large": ("swin", {"swin_embed_dim": 192, "swin_num_heads": (6, 12, 24, 48), "swin_window_size": 12}),
}


@pytest.mark.parametrize("name", sorted(ZOO_MODELS))
def test_every_zoo_checkpoint_has_a_matching_preset(name):
    url = MODEL_ZOO[name]
    match = re.search(
        r"mask2former/(\w+)/(\w+)/maskformer2_(R50|R101|swin_[a-z]+)_.*model_final_[0-9a-f]{6}\.pkl$", url
    )
    assert match, url
    dataset, task, token = match.groups()
    config = Mask2FormerConfig.preset(name).validate()
    assert (config.inference.task, config.model.num_classes) == (task, CLASSES[dataset, task])
    backbone, fields = BACKBONES[token]
    assert config.model.backbone == backbone
    for key, value in fields.items():
        assert getattr(config.model, key) == value, key
    # Swin-L uses 200 queries, except the two semantic Swin-L configs (Cityscapes, ADE20K res640): 100
    expected_queries = 200 if token == "swin_large" and task != "semantic" else 100
    assert config.model.num_queries == expected_queries
    assert ("IN21k" in url) == name.endswith("_in21k")


def test_r101_is_not_a_download_and_says_how_to_make_it():
    assert "R-101" not in MODEL_ZOO
    with pytest.raises(CheckpointError, match=r"R-101: no R-101\.pkl is published.*convert-torchvision-to-d2\.py"):
        download("R-101")


def test_documented_model_zoo_table_is_the_generated_one():
    table = zoo_table()
    assert table.count("\n") == len(ZOO_MODELS) + 1
    assert table in (ROOT / "docs" / "model.md").read_text(), (
        "regenerate: python -m tools.convert_detectron2_checkpoint --list"
    )


def test_list_imports_neither_keras_nor_tensorflow():
    """`--list` reads the zoo from model_zoo.py (plain data): no Keras, TensorFlow or NumPy import (before: 10-19 s
    on a shared 2-core machine, importing model/; after 0.26 s)."""
    command = [sys.executable, "-m", "tools.convert_detectron2_checkpoint", "--list"]
    done = subprocess.run([command[0], "-X", "importtime", *command[1:]], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == zoo_table(), done.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert not imported & {"keras", "tensorflow", "numpy", "model"}, sorted(imported)


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _zoo_file(folder: Path, content: bytes, prefix: str | None = None) -> str:
    """Writes `content` as model_final_<md5 prefix>.pkl (or a given prefix) under folder/run; returns its path."""
    prefix = prefix or hashlib.md5(content).hexdigest()[:6]
    (folder / "run").mkdir(exist_ok=True)
    path = folder / "run" / f"model_final_{prefix}.pkl"
    path.write_bytes(content)
    return f"run/{path.name}"


def test_download_checks_the_md5_prefix_of_the_name(server, tmp_path):
    root, base = server
    good = _zoo_file(root, b"weights " * 1000)
    cache = tmp_path / "cache"
    path = download(f"{base}/{good}", cache_dir=str(cache))
    assert Path(path).read_bytes() == b"weights " * 1000 and Path(path + ".sha256").is_file()

    bad = _zoo_file(root, b"truncated", prefix="3c8ec9")
    with pytest.raises(CheckpointError, match=r"md5 [0-9a-f]{32}, but the file name says it starts with 3c8ec9"):
        download(f"{base}/{bad}", cache_dir=str(cache))
    assert not (cache / "run" / "model_final_3c8ec9.pkl").exists()  # nothing half-written is kept

    with open(path, "r+b") as f:  # a damaged cache entry is caught by the md5 prefix too
        f.write(b"garbage!")
    with pytest.raises(CheckpointError, match=r"cached .* has md5 .* delete it and download again"):
        download(f"{base}/{good}", cache_dir=str(cache))


def test_file_urls_are_checked_too(tmp_path):
    bad = _zoo_file(tmp_path, b"x", prefix="000000")
    with pytest.raises(CheckpointError, match="starts with 000000"):
        download((tmp_path / bad).as_uri(), cache_dir=str(tmp_path / "cache"))

"""The quickstart command end to end (a short run): data, conversion, training, evaluation, pictures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_reports_the_held_out_ap(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "quickstart.py"), "--set", "train.max_steps=30", "train.lr_decay_steps=[20]"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("held-out mask AP: ")
    assert 0.0 <= float(last.split(": ")[1]) <= 1.0
    for path in ("runs/quickstart/metrics.json", "runs/quickstart/learning_curve.png", "images/quickstart/montage.png"):
        assert (tmp_path / path).is_file(), path
    assert len(list((tmp_path / "images/quickstart").glob("*.json"))) == 8

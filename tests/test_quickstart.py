"""The quickstart command end to end, as the README runs it: data, conversion, training, evaluation, pictures,
and the held-out mask AP its recipe reaches (-m slow). Its fast twin in the default suite is the same chain
at 64 px for 50 steps, tests/test_training_learns.py::test_fifty_steps_learn_the_two_images."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Runs of the full recipe (2,000 steps) scored 0.58-0.61 held-out mask AP; a model that learned nothing
# scores about 0.
QUICKSTART_AP_FLOOR = 0.5


@pytest.mark.slow
def test_quickstart_reaches_its_held_out_ap(tmp_path):
    """`python quickstart.py` (about 12 minutes on 2 idle CPU cores)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "quickstart.py")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("held-out mask AP: ")
    assert float(last.split(": ")[1]) >= QUICKSTART_AP_FLOOR, result.stdout[-3000:]
    for path in ("runs/quickstart/metrics.json", "runs/quickstart/learning_curve.png", "images/quickstart/montage.png"):
        assert (tmp_path / path).is_file(), path
    assert len(list((tmp_path / "images/quickstart").glob("*.json"))) == 8

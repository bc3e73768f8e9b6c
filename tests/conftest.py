"""Shared test setup: repository root on sys.path, quiet TensorFlow, the external test data folder."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Real external files with reference results (never copied into the repository).
SHARED_TESTDATA = Path(os.environ.get("MASK2FORMER_TESTDATA", ROOT.parent / "shared" / "testdata"))

"""`cli.reuse_freed_memory`: a large block freed by one call stays with the process for the next one."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Fills and frees a 64 MB array twice; prints resident MB after the first free and after the second fill.
PROBE = """
import sys
import numpy as np
import cli
if {tuned}:
    assert cli.reuse_freed_memory()
def resident_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:"))
start = resident_mb()
block = np.ones(16 * 2**20, np.float32)
del block
after_free = resident_mb() - start
block = np.ones(16 * 2**20, np.float32)
print(after_free, resident_mb() - start)
"""


def resident_growth(tuned: bool) -> tuple[int, int]:
    code = PROBE.format(tuned=tuned)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    after_free, after_second_fill = (int(v) for v in out.split())
    return after_free, after_second_fill


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt, /proc/self/status")
def test_a_freed_large_block_is_kept_and_reused():
    after_free, _ = resident_growth(tuned=False)
    assert after_free < 16  # glibc's default: the 64 MB go back to the kernel, to be faulted in again
    after_free, after_second_fill = resident_growth(tuned=True)
    assert after_free >= 60  # kept
    assert after_second_fill < after_free + 16  # and reused, not a second 64 MB

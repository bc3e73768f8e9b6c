"""Wall time of `python SCRIPT --help` for every script (`cli.SCRIPTS`), against a bare interpreter start-up.

    python -m bench.help_time [--rounds 7]

Each round runs every script's `--help` and `python -c pass` once, interleaved, in fresh processes; it
prints the median of each and its ratio to the bare interpreter (the noise of a shared machine moves
both alike), e.g.

    train.py --help: median 0.41 s (2.9x bare python)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from cli import SCRIPTS, script_argv  # the standard library only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BARE = "bare python"


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    args = parser.parse_args(argv)
    commands = {script: [sys.executable, *script_argv(script), "--help"] for script in SCRIPTS}
    commands[BARE] = [sys.executable, "-c", "pass"]
    times: dict[str, list[float]] = {name: [] for name in commands}
    seconds(commands["train.py"])  # warm-up: the file cache
    for _ in range(args.rounds):
        for name, command in commands.items():
            times[name].append(seconds(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name in SCRIPTS:
        print(f"{name} --help: median {medians[name]:.2f} s ({medians[name] / medians[BARE]:.1f}x bare python)")
    print(f"{BARE}: median {medians[BARE]:.2f} s ({args.rounds} rounds)")
    return medians


if __name__ == "__main__":
    main()

"""The criterion of this checkout against the criterion of a git revision and the reference, in one process.

    python bench/ab_criterion.py --rev 4ec49f9        # 2 x 512x512, 5 and 10 instances, as bench_criterion.py

Forward + backward as in `bench_criterion.py` (same inputs, ours under `tf.function`), three sides
interleaved (revision, this checkout, transformers' `Mask2FormerLoss`), medians after warm-up, 2 threads
each. Prints wall-clock and process CPU seconds: on a shared machine the CPU seconds of a side vary less
than its wall-clock time. The revision's `losses/` package is read with `git show` into a temporary folder.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
from bench_criterion import make_predictions, make_targets, ours_fn, reference_fn  # noqa: E402
from harness import machine, set_threads  # noqa: E402  (sets OMP_WAIT_POLICY before torch)

FILES = ("__init__", "criterion", "matcher", "point_sampling")


def load_revision(rev: str, folder: str):
    """`losses` at git revision `rev`, imported as the package `losses_at_rev`."""
    package = os.path.join(folder, "losses_at_rev")
    os.makedirs(package)
    for name in FILES:
        source = subprocess.run(
            ["git", "show", f"{rev}:losses/{name}.py"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        with open(os.path.join(package, f"{name}.py"), "w") as f:
            f.write(
                source.replace("from losses.", "from losses_at_rev.").replace("from losses ", "from losses_at_rev ")
            )
    sys.path.insert(0, folder)
    return importlib.import_module("losses_at_rev")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="git revision whose losses/ to compare against")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-points", type=int, default=12544)
    args = parser.parse_args()
    set_threads()
    import losses

    rng = np.random.default_rng(0)
    targets = make_targets(rng, [5, 10], 512)
    predictions = make_predictions(rng, 2, 100, 512, 10)
    with tempfile.TemporaryDirectory() as folder:
        runs = {
            args.rev: ours_fn(predictions, targets, args.num_points, load_revision(args.rev, folder)),
            "this checkout": ours_fn(predictions, targets, args.num_points, losses),
            "reference": reference_fn(predictions, targets, args.num_points),
        }
        wall, cpu = ({name: [] for name in runs} for _ in range(2))
        for i in range(args.warmup + args.repeats):
            for name, run in runs.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                run()
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
                print(f"  round {i} {name}: {seconds:.2f} s wall, {cpu_seconds:.2f} s CPU", flush=True)
                if i >= args.warmup:
                    wall[name].append(seconds)
                    cpu[name].append(cpu_seconds)
    print(f"machine: {machine()}; medians of {args.repeats} after {args.warmup} warm-up, interleaved")
    for label, times in (("wall", wall), ("CPU", cpu)):
        med = {name: statistics.median(t) for name, t in times.items()}
        old, new, ref = med[args.rev], med["this checkout"], med["reference"]
        print(
            f"  {label}: {args.rev} {old:.3f} s, this checkout {new:.3f} s, reference {ref:.3f} s; "
            f"{args.rev} / this = {old / new:.2f}x, reference / this = {ref / new:.2f}x, reference / {args.rev} = "
            f"{ref / old:.2f}x"
        )


if __name__ == "__main__":
    main()

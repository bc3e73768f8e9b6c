"""Resident memory of a training step as it builds up: after import, model built, traced (ours), each step.

    python -m bench.memory_train_step               # ours and the reference, 2 x 512x512, 5 steps each
    python -m bench.memory_train_step --steps 3 --size 256

Each side runs in a fresh process (`bench_train_step.py`'s workloads: `TrainStep` against transformers'
model + `Mask2FormerLoss` + AdamW) and prints its resident memory (VmRSS) and peak (VmHWM) at each point,
so that the framework's share (imports, model objects, the traced graph) can be told from the step's
(activations, gradients, optimizer slots).
"""

from __future__ import annotations

import argparse
import subprocess

from bench.bench_train_step import add_workload_arguments
from bench.harness import ROOT, fresh_process, peak_resident_gb, resident_gb, set_threads  # OMP_WAIT_POLICY first


def report(label: str) -> None:
    print(f"  {label:18s} resident {resident_gb():5.2f} GB   peak {peak_resident_gb():5.2f} GB", flush=True)


def child(args) -> None:
    set_threads()
    from bench.bench_train_step import make_batch

    images, targets = make_batch(args)
    report("after import")
    if args.child == "ours":
        from bench.bench_train_step import ours_batch, ours_train_step

        train_step, batch = ours_train_step(images), ours_batch(images, targets)
        report("model built")
        train_step._function.get_concrete_function(batch)
        report("step traced")
        run = lambda: train_step(batch)["loss_total"].numpy()  # noqa: E731
    else:
        from bench.bench_train_step import reference_fn

        run = reference_fn(images, targets)
        report("model built")
    for step in range(1, args.steps + 1):
        run()
        report(f"after step {step}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    for side in ("reference", "ours"):
        print(
            f"{side}: {args.instances.count(',') + 1} x {args.size}x{args.size}, instances {args.instances}", flush=True
        )
        argv = (
            fresh_process(__file__)
            + ["--child", side]
            + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "child"]
        )
        subprocess.run(argv, cwd=ROOT, check=True)


if __name__ == "__main__":
    main()

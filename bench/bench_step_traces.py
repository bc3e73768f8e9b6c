"""The training step's traces: one graph for every target bucket against one graph per bucket (A/B).

    python bench/bench_step_traces.py               # R50, 2 x 256x256, buckets of 5,10 and 1,2 instances (~12 min)
    python bench/bench_step_traces.py --size 512    # train.py's usual size; traces take as long, steps 3x longer

"one": `TrainStep` as train.py calls it (its first call traces with the slot count left open, later buckets
reuse that graph). "per bucket": the same step's `tf.function` called directly, which traces (and grappler
optimises) a graph for each bucket's static shapes, as the step did before. Two models with the same config,
random weights. Prints each side's first call per bucket (trace + optimisation + run), then the steps of each
bucket interleaved (one / per bucket in turn), medians after the first calls. TensorFlow only; 2 threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_step import make_batch, ours_batch, ours_train_step  # noqa: E402
from harness import machine, set_tensorflow_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="square image side")
    parser.add_argument("--buckets", default="5,10;1,2", help="instances per image of each batch, ';' between")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps of each side per bucket")
    args = parser.parse_args()
    set_tensorflow_threads()

    batches = []
    for instances in args.buckets.split(";"):
        workload = types.SimpleNamespace(seed=0, instances=instances, size=args.size, max_instances=128)
        images, targets = make_batch(workload)
        batches.append(ours_batch(images, targets))
    print(f"R50, 2 x {args.size}x{args.size}, float32, buckets {[b['valid'].shape[1] for b in batches]}; {machine()}")
    steps = {"one": ours_train_step(images), "per bucket": ours_train_step(images)}
    calls = {"one": steps["one"], "per bucket": steps["per bucket"]._function}

    def timed(name, batch) -> float:
        start = time.perf_counter()
        float(calls[name](batch)["loss_total"])
        return time.perf_counter() - start

    for batch in batches:
        for name in calls:
            print(
                f"first call, bucket {batch['valid'].shape[1]:3d}, {name:10s}: {timed(name, batch):6.1f} s", flush=True
            )
    times = {(name, i): [] for name in calls for i in range(len(batches))}
    for _ in range(args.repeats):
        for i, batch in enumerate(batches):
            for name in calls:
                times[name, i].append(timed(name, batch))
    for i, batch in enumerate(batches):
        one, per_bucket = (statistics.median(times[name, i]) for name in calls)
        print(f"step, bucket {batch['valid'].shape[1]:3d}: one {one:.2f} s, per bucket {per_bucket:.2f} s")
    print(f"traces: one {steps['one'].tracing_count}, per bucket {steps['per bucket'].tracing_count}")


if __name__ == "__main__":
    main()

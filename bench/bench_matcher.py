"""Loss + matching time per step for the two assignment back ends (scipy vs pure TF).

    python -m bench.bench_matcher            # 2 images, 100 queries x 50 targets x 10 prediction sets
    python -m bench.bench_matcher --batch 4 --loss-repeats 10

Prints, for each back end and execution mode, the median time of (a) the assignment alone on the
stacked (sets * batch, queries, targets) cost matrices and (b) the whole criterion forward pass
(costs on 12544 points, matching, importance-sampled losses for every set), the ratios to scipy,
and the machine it ran on. Inputs are random tensors with the model's output shapes.
"""

from __future__ import annotations

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.bench_criterion import make_predictions, make_targets  # noqa: E402
from bench.harness import median_seconds  # noqa: E402
from config import Mask2FormerConfig  # noqa: E402
from losses import build_criterion  # noqa: E402


def make_inputs(args, rng):
    """The criterion's inputs as bench_criterion.py makes them: every image with `args.targets` discs (no padding)."""
    sets = make_predictions(rng, args.batch, args.queries, args.image, args.sets)
    sets = [{k: tf.constant(v) for k, v in p.items()} for p in sets]
    targets = make_targets(rng, [args.targets] * args.batch, args.image, max_instances=args.targets)
    return dict(sets[0], aux_outputs=sets[1:]), {k: tf.constant(v) for k, v in targets.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--sets", type=int, default=10)
    parser.add_argument("--image", type=int, default=1024, help="training crop side; predicted masks are 1/4")
    parser.add_argument("--repeats", type=int, default=50, help="runs of the assignment alone")
    parser.add_argument("--loss-repeats", type=int, default=3, help="runs of the whole criterion")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    outputs, targets = make_inputs(args, rng)
    seed = tf.constant([[1, i] for i in range(args.batch)])  # per-image seeds
    costs = tf.constant(rng.uniform(size=(args.sets * args.batch, args.queries, args.targets)), tf.float32)
    valid = tf.ones([args.sets * args.batch, args.targets], tf.bool)

    rows = []
    for backend, jit in (("scipy", False), ("device", False), ("device", True)):
        config = Mask2FormerConfig()
        config.loss.matcher = backend
        criterion = build_criterion(config, dynamic_pairs=not jit)
        assign = tf.function(criterion.matcher.assign, jit_compile=jit)
        loss = tf.function(lambda o, t, s, c=criterion: c(o, t, seed=s)["loss_total"], jit_compile=jit)
        rows.append(
            (
                f"{backend}{' + XLA' if jit else ''}",
                median_seconds(lambda a=assign: a(costs, valid).numpy(), args.repeats),
                median_seconds(lambda f=loss: f(outputs, targets, seed).numpy(), args.loss_repeats),
            )
        )

    devices = [d.device_type for d in tf.config.list_physical_devices()]
    gpu = [
        tf.config.experimental.get_device_details(d).get("device_name", "GPU")
        for d in tf.config.list_physical_devices("GPU")
    ]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"devices {devices}{' ' + str(gpu) if gpu else ''}; TF {tf.__version__}"
    )
    print(
        f"problem: {args.batch} images x {args.queries} queries x {args.targets} targets x {args.sets} sets, "
        f"{args.image}px crops; medians of {args.repeats} (assignment) and {args.loss_repeats} (loss) runs"
    )
    print(f"{'back end':<12} {'assignment ms':>14} {'ratio':>7} {'loss+matching ms':>17} {'ratio':>7}")
    base_assign, base_loss = rows[0][1], rows[0][2]
    for name, t_assign, t_loss in rows:
        print(
            f"{name:<12} {1e3 * t_assign:>14.2f} {t_assign / base_assign:>7.2f} {1e3 * t_loss:>17.1f} "
            f"{t_loss / base_loss:>7.2f}"
        )


if __name__ == "__main__":
    main()

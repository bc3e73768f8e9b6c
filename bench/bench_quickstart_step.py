"""Seconds per training step of the quickstart recipe, this checkout against an earlier revision.

    python bench/bench_quickstart_step.py                      # against f4dbbca (main before issue 10)
    python bench/bench_quickstart_step.py --before REV --steps 30 --rounds 2

Writes the quickstart's synthetic training split once (to a temporary folder), exports REV with
`git archive` next to it, then runs the quickstart step (the `quickstart` preset: pipeline,
`TrainStep`, 8 images of 128x128 per step) in fresh processes, alternating before / after for
`--rounds` rounds. Each process times `--steps` steps after `--warmup` (data included, as the training
loop sees them) and reports its median; the figure per version is the median over its rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(args):
    """Runs in the code version at args.code: times the quickstart train step."""
    sys.path.insert(0, args.code)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    from config import Mask2FormerConfig
    from losses import build_criterion
    from model import build_model
    from training.distribution import distributed_train_dataset, replica_batch_size, select_strategy
    from training.optimizer import build_optimizer
    from training.schedules import build_schedule
    from training.train_step import TrainStep

    config = Mask2FormerConfig.preset("quickstart")
    config.data.train_files = os.path.join(args.data, "tfrecords", "train-*.tfrecord")
    config.data.categories_file = os.path.join(args.data, "tfrecords", "categories.json")
    config.validate()
    t = config.train
    keras.utils.set_random_seed(t.seed)
    strategy = select_strategy(t)
    with strategy.scope():
        model = build_model(config, dtype=keras.DTypePolicy(t.mixed_precision))
        step = tf.Variable(0, dtype=tf.int64, trainable=False)
        schedule = build_schedule(t)
        optimizer = build_optimizer(t, model, learning_rate=lambda: schedule(step))
    train_step = TrainStep(
        model,
        build_criterion(config),
        optimizer,
        strategy,
        step,
        accumulation_steps=t.accumulation_steps,
        replica_batch_size=replica_batch_size(config, strategy),
        seed=t.seed,
        learning_rate=schedule,
        jit_compile=t.jit_compile,
    )
    iterator = iter(distributed_train_dataset(config, strategy))
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        float(train_step(next(iterator))["loss_total"])
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    print("RESULT " + json.dumps({"median": statistics.median(times), "times": times}))


def run_version(code, args):
    argv = [sys.executable, os.path.abspath(__file__), "--child", "--code", code, "--data", args.data]
    argv += [f"--steps={args.steps}", f"--warmup={args.warmup}"]
    env = {**os.environ, "PYTHONPATH": code, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(argv, cwd=code, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"{code}: no result\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[0][len("RESULT ") :])["median"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="f4dbbca", help="git revision to compare with")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--code", default=ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory(prefix="bench_quickstart_") as tmp:
        before = os.path.join(tmp, "before")
        os.makedirs(before)
        archive = subprocess.run(["git", "-C", ROOT, "archive", args.before], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", before], input=archive, check=True)
        args.data = os.path.join(tmp, "data")
        write_training_split(args.data)
        seconds = {"before": [], "after": []}
        for _ in range(args.rounds):
            for name, code in (("before", before), ("after", ROOT)):
                seconds[name].append(run_version(code, args))
                print(f"  {name}: {seconds[name][-1]:.3f} s per step", flush=True)
    b, a = statistics.median(seconds["before"]), statistics.median(seconds["after"])
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPU cores, load {load:.1f}; quickstart preset, 8 images of 128x128 per step")
    print(f"  before ({args.before})  {b:6.3f} s per step   rounds {[round(x, 3) for x in seconds['before']]}")
    print(f"  after (this checkout) {a:6.3f} s per step   rounds {[round(x, 3) for x in seconds['after']]}")
    print(f"  before / after = {b / a:.2f}x  (medians of {args.steps} steps after {args.warmup} warm-up per process)")


def write_training_split(folder):
    """The quickstart's 400 synthetic training images, converted to TFRecords in `folder`."""
    sys.path.insert(0, ROOT)
    import convert_coco_to_tfrecord
    from data.synthetic import SyntheticSpec, write_dataset

    write_dataset(folder, SyntheticSpec(height=128, width=128, seed=0, image_format="png"), {"train": 400})
    argv = [
        f"--image_dir={folder}/train",
        f"--object_annotations_file={folder}/annotations/instances_train.json",
        f"--output_file_prefix={folder}/tfrecords/train",
        "--num_shards=2",
        "--strict",
    ]
    if convert_coco_to_tfrecord.main(argv) != 0:
        raise SystemExit("converting the synthetic training split failed")


if __name__ == "__main__":
    main()

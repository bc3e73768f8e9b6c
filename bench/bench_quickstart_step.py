"""Seconds per training step of the quickstart recipe (the `quickstart` preset: pipeline, `TrainStep`, 8 images
of 128x128 per step).

    python -m bench.bench_quickstart_step                  # 30 steps after 5 warm-up steps
    python -m bench.bench_quickstart_step --steps 15 --warmup 3

Writes the quickstart's synthetic training split once (to a temporary folder), then times `--steps` steps
after `--warmup` (data included, as the training loop sees them) and prints their median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def seconds_per_step(data: str, steps: int, warmup: int) -> float:
    """Median seconds of `steps` quickstart training steps on the TFRecords in `data`, after `warmup` steps."""
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
    config.data.train_files = os.path.join(data, "tfrecords", "train-*.tfrecord")
    config.data.categories_file = os.path.join(data, "tfrecords", "categories.json")
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
    for i in range(warmup + steps):
        start = time.perf_counter()
        float(train_step(next(iterator))["loss_total"])
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (tracing)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_quickstart_") as data:
        write_training_split(data)
        median = seconds_per_step(data, args.steps, args.warmup)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPU cores, load {load:.1f}; quickstart preset, 8 images of 128x128 per step")
    print(f"  {median:.3f} s per step (median of {args.steps} steps after {args.warmup} warm-up)")


def write_training_split(folder):
    """The quickstart's 400 synthetic training images, converted to TFRecords in `folder`."""
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

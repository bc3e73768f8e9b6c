"""One training step (forward, matching, loss, backward, AdamW update) against the reference.

    python -m bench.bench_train_step                # 2 x 512x512, 5 and 10 instances, R50, 80 classes, 100 queries
    python -m bench.bench_train_step --memory       # also the peak resident memory of each, fresh processes
    KERAS_BACKEND=torch python -m bench.bench_train_step    # ours on Keras' PyTorch backend (or jax)

Ours: the step train.py runs on the Keras backend of the process, float32, global-norm clipping at 0.01,
AdamW: `TrainStep` on TensorFlow (one tf.function), `KerasTrainStep` on PyTorch (eager) and JAX (jax.jit),
on a batch as the pipeline gives it (targets padded to the batch's bucket, uint8). Round 0 (a warm-up) is
the first step: tracing and compilation included. Reference: transformers'
`Mask2FormerForUniversalSegmentation` with its `Mask2FormerLoss` (labels passed to the forward), frozen
batch norm as ours, `clip_grad_norm_(0.01)` and `torch.optim.AdamW`. Random R50 weights on both sides
(timing does not depend on their values). Interleaved ours / reference, medians after warm-up, 2 threads
each, torch with OMP_WAIT_POLICY=PASSIVE (set before torch is imported).
"""

from __future__ import annotations

import argparse

import numpy as np  # noqa: E402

from bench.bench_criterion import make_targets, reference_targets  # noqa: E402
from bench.harness import add_common_arguments, run_main  # noqa: E402  (sets OMP_WAIT_POLICY before torch)


def add_workload_arguments(parser):
    """--size, --instances, --max-instances: the batch `make_batch` builds."""
    parser.add_argument("--size", type=int, default=512, help="square image side")
    parser.add_argument("--instances", default="5,10", help="instances per image, comma separated")
    parser.add_argument("--max-instances", type=int, default=128, help="data.max_instances (caps the bucket)")


def make_batch(args):
    rng = np.random.default_rng(args.seed)
    counts = [int(c) for c in args.instances.split(",")]
    targets = make_targets(rng, counts, args.size, args.max_instances)
    images = rng.uniform(0, 255, (len(counts), args.size, args.size, 3)).astype(np.float32)
    return images, targets


def ours_train_step(images):
    """train.py's step for R50 in float32 on this process's Keras backend, for batches of `images`' size:
    a callable `batch -> results`."""
    import keras

    from config import Mask2FormerConfig
    from losses import build_criterion
    from model import build_model
    from training.optimizer import build_optimizer
    from training.schedules import build_schedule

    config = Mask2FormerConfig()
    config.train.mixed_precision = "float32"
    model = build_model(config)
    if keras.backend.backend() != "tensorflow":
        from training.keras_step import KerasTrainStep

        optimizer = build_optimizer(config.train, model, learning_rate=config.train.learning_rate)
        criterion = build_criterion(config, dynamic_pairs=keras.backend.backend() != "jax")
        step_fn = KerasTrainStep(model, criterion, optimizer, build_schedule(config.train))
        return lambda batch: step_fn(batch, 0)

    import tensorflow as tf

    from training.train_step import TrainStep

    step = tf.Variable(0, dtype=tf.int64)
    schedule = build_schedule(config.train)
    return TrainStep(
        model,
        build_criterion(config),
        build_optimizer(config.train, model, learning_rate=lambda: schedule(step)),
        tf.distribute.get_strategy(),
        step,
        accumulation_steps=1,
        replica_batch_size=len(images),
        seed=0,
        learning_rate=schedule,
    )


def ours_batch(images, targets) -> dict:
    """The batch as the pipeline gives it to the step: image and padded targets (tensors on TensorFlow)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return {"image": images, **targets}
    import tensorflow as tf

    return {"image": tf.constant(images), **{k: tf.constant(v) for k, v in targets.items()}}


def ours_fn(images, targets):
    train_step, batch = ours_train_step(images), ours_batch(images, targets)
    return lambda: float(train_step(batch)["loss_total"])


def reference_fn(images, targets):
    from tests.hf_reference import build_reference, reference_train_step

    return reference_train_step(build_reference("r50", seed=0), images, *reference_targets(targets))


def build(args, which):
    images, targets = make_batch(args)
    return (ours_fn if which == "ours" else reference_fn)(images, targets)


def describe(args) -> str:
    import keras

    return (
        f"{keras.backend.backend()} training step (forward, matching, loss, backward, AdamW): {len(args.instances.split(','))} x "
        f"{args.size}x{args.size}, instances {args.instances}, R50, 80 classes, 100 queries"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    add_common_arguments(parser, warmup=1, repeats=3)
    run_main(__file__, parser, build, describe)


if __name__ == "__main__":
    main()

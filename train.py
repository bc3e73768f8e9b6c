"""Trains Mask2Former: one tf.function step with gradient accumulation, mixed precision and tf.distribute.

    python train.py --preset coco_instance \
        --set data.train_files='datasets/coco/tfrecords/train-*.tfrecord' train.output_dir=runs/coco_r50

It prints one line saying how the run starts (initial weights or the checkpoint it resumes, replicas,
images per step and per replica, micro-batches, precision, step range), then a progress bar
(`step`, `loss`, `ce`, `mask`, `dice` of the final prediction set, `lr`, `images/s`, ETA), a line for
every skipped non-finite step, and at the end

    finished: 368750 steps, last loss 12.3456, checkpoint runs/coco_r50/checkpoints/ckpt-368750

The run folder (`train.output_dir`) receives `config.json` (the resolved config), `checkpoints/`
(every `train.checkpoint_every` steps and at the end), `metrics.jsonl` (one line per step),
`tensorboard/` (every loss term, lr, gradient norm, loss scale, rendered predictions) and, when it
finishes, `model.weights.h5` for `test_map.py --config RUN/config.json --weights RUN/model.weights.h5`.

Running it again with the same output_dir resumes from the newest checkpoint (model, optimizer,
loss scale, step, schedule and data position); `--no-resume` refuses a folder that has checkpoints.
Distribution comes from `train.distribution` (default "auto": TPU_NAME -> TPU, TF_CONFIG -> multi-worker,
several GPUs -> mirrored). Exit status: 0 finished, 1 stopped on `train.max_nonfinite_steps` non-finite
losses in a row (the last good checkpoint is kept), 2 bad configuration or input.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from config import ConfigError, add_config_arguments, config_from_args  # noqa: E402
from model.checkpoint import CheckpointError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the newest checkpoint in train.output_dir if there is one (default: on)",
    )
    add_config_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_from_args(args)
        from training.loop import train

        result = train(config, resume=args.resume)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    last_loss = result.history[-1]["loss_total"] if result.history else float("nan")
    if result.status != "finished":
        print(f"stopped: non-finite losses at step {result.step}; last good checkpoint {result.last_checkpoint}")
        return 1
    print(f"finished: {result.step} steps, last loss {last_loss:.4f}, checkpoint {result.last_checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

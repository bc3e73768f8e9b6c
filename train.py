"""Trains Mask2Former on the Keras backend KERAS_BACKEND names: TensorFlow (default: one tf.function step,
tf.distribute strategies), JAX (one jax.jit step on one device) or PyTorch (eager, one device).

    python train.py --preset coco_instance \
        --set data.train_files='datasets/coco/tfrecords/train-*.tfrecord' train.output_dir=runs/coco_r50
    KERAS_BACKEND=jax python train.py ...    # the same run on JAX (checkpoints: checkpoints/ckpt-N.npz)

It prints one line saying how the run starts (initial weights or the checkpoint it resumes, replicas,
images per step and per replica, micro-batches, precision, step range), then the progress (`step`,
`loss`, `ce`, `mask`, `dice` of the final prediction set, `lr`, `images/s`, ETA: a bar on a terminal,
one plain line every `train.log_every` steps or minute in a log file), a line for every skipped
non-finite step, and at the end

    finished: 368750 steps, last loss 12.3456, checkpoint runs/coco_r50/checkpoints/ckpt-368750

The run folder (`train.output_dir`) receives `config.json` (the resolved config), `checkpoints/`
(every `train.checkpoint_every` steps and at the end), `metrics.jsonl` (one line per step),
`tensorboard/` (every loss term, lr, gradient norm, loss scale, rendered predictions) and, when it
finishes, `model.weights.h5` for `test_map.py --config RUN/config.json --weights RUN/model.weights.h5`
and `model.keras` (the same model, carrying its test-time sizes, task, thresholds and class names) for
`test.py --model RUN/model.keras`.

Running it again with the same output_dir resumes from the newest checkpoint (model, optimizer,
loss scale, step, schedule and data position); `--no-resume` refuses a folder that has checkpoints.
Distribution comes from `train.distribution` (default "auto": TPU_NAME -> TPU, TF_CONFIG -> multi-worker,
several GPUs -> mirrored). A run folder keeps its config: resuming with different settings is refused
with the differing fields listed (a longer `train.max_steps` and logging / checkpoint periods are fine;
`--allow_config_change` accepts the rest). Free disk space and write access are checked before the first
step. Ctrl-C (SIGINT) or SIGTERM (a preempted VM) saves a checkpoint at the current step and exits with
one line saying how to resume. Exit status: 0 finished, 1 stopped on `train.max_nonfinite_steps`
non-finite losses in a row (the last good checkpoint is kept), 2 bad configuration or input (one line),
130 after SIGINT, 143 after SIGTERM.
"""

from __future__ import annotations

import argparse
import sys

import cli


def parse_args(argv: list[str] | None = None):
    parser = cli.parser(__doc__)
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the newest checkpoint in train.output_dir if there is one (default: on)",
    )
    parser.add_argument(
        "--allow_config_change",
        action="store_true",
        help="resume a run folder whose config.json differs from this config (the differences are listed)",
    )
    cli.add_config_arguments(parser)
    return cli.parse(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = cli.config_from_args(args)
    cli.import_tensorflow()
    from training.loop import train

    result = train(config, resume=args.resume, allow_config_change=args.allow_config_change)
    last_loss = result.history[-1]["loss_total"] if result.history else float("nan")
    if result.status == "interrupted":
        saved = (
            f"saved checkpoint {result.last_checkpoint}" if result.last_checkpoint else "no step done, nothing saved"
        )
        print(f"{result.signal_name} at step {result.step}: {saved}; run the same command again to resume")
        return cli.EXIT_INTERRUPTED if result.signal_name == "SIGINT" else cli.EXIT_TERMINATED
    if result.status != "finished":
        print(f"stopped: non-finite losses at step {result.step}; last good checkpoint {result.last_checkpoint}")
        return cli.EXIT_FAILED
    print(f"finished: {result.step} steps, last loss {last_loss:.4f}, checkpoint {result.last_checkpoint}")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main))

"""The training run: build everything under the strategy, initialise or resume, loop, checkpoint, report.

from training.loop import train
result = train(config)          # resumes from config.train.output_dir if it holds a checkpoint
print(result.status, result.step, result.last_checkpoint)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from config import Mask2FormerConfig
from data.pipeline import load_categories
from inference.postprocess import PostProcessor
from losses import build_criterion
from model import build_model
from training.checkpointing import CONFIG_FILE, TrainingCheckpoints, latest_checkpoint
from training.distribution import distributed_train_dataset, is_chief, replica_batch_size, select_strategy
from training.initialization import initialize_weights
from training.optimizer import build_optimizer
from training.reporting import TrainingReporter
from training.schedules import build_schedule
from training.train_step import TrainStep

FINAL_WEIGHTS = "model.weights.h5"


@dataclass
class TrainResult:
    """status: "finished" or "stopped_nonfinite"; step: optimizer steps done; last_checkpoint: path or None;
    history: the scalars of each step of this process; model: the trained model."""

    status: str
    step: int
    last_checkpoint: str | None
    history: list[dict] = field(default_factory=list)
    model: keras.Model | None = None


def train(config: Mask2FormerConfig, *, resume: bool = True, criterion=None) -> TrainResult:
    """Trains `config` until `train.max_steps` optimizer steps, or until `train.max_nonfinite_steps`
    non-finite losses in a row. `resume`: continue from the newest checkpoint in `train.output_dir` (if
    there is none, start fresh); False refuses a folder that already has one. `criterion` replaces
    `build_criterion(config)` (tests inject faults with it). A run without `data.seed` gets
    `train.seed`, so that its input can be resumed at the same position."""
    config.validate()
    t = config.train
    if config.data.seed is None:
        config.data.seed = t.seed
    if latest_checkpoint(t.output_dir) and not resume:
        raise ValueError(
            f"{t.output_dir} already holds checkpoints; resume it (drop --no-resume) or set another train.output_dir"
        )
    keras.utils.set_random_seed(t.seed)

    strategy = select_strategy(t)
    chief = is_chief(strategy)
    per_replica = replica_batch_size(config, strategy)
    with strategy.scope():
        model = build_model(config, dtype=keras.DTypePolicy(t.mixed_precision))
        step = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="step", aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA
        )
        schedule = build_schedule(t)
        optimizer = build_optimizer(t, model, learning_rate=lambda: schedule(step))

    resolver = getattr(strategy, "cluster_resolver", None)
    checkpoints = TrainingCheckpoints(
        t.output_dir,
        model=model,
        optimizer=optimizer,
        step=step,
        keep=t.keep_checkpoints,
        chief=chief,
        worker_id=(resolver.task_id or 0) if resolver is not None else 0,
    )
    last_checkpoint = checkpoints.restore_latest() if resume else None
    start_step = int(step.numpy())
    init_summary = f"resumed from {last_checkpoint} at step {start_step}" if last_checkpoint else None
    if init_summary is None:
        init_summary = initialize_weights(model, t)
    if chief:
        config.save(os.path.join(t.output_dir, CONFIG_FILE))

    train_step = TrainStep(
        model,
        criterion or build_criterion(config),
        optimizer,
        strategy,
        step,
        accumulation_steps=t.accumulation_steps,
        replica_batch_size=per_replica,
        seed=t.seed,
        learning_rate=schedule,
        jit_compile=t.jit_compile,
    )
    render = not isinstance(strategy, tf.distribute.TPUStrategy)  # predictions are drawn on the host
    categories = load_categories(config, config.data.train_files)
    reporter = TrainingReporter(
        t.output_dir,
        start_step=start_step,
        max_steps=t.max_steps,
        images_per_step=t.batch_size,
        log_every=t.log_every,
        chief=chief,
        class_names=categories.names,
        postprocessor=PostProcessor.from_config(config, isthing=categories.isthing) if render else None,
    )
    reporter.message(
        f"{init_summary}; {strategy.num_replicas_in_sync} replica(s) ({type(strategy).__name__}), "
        f"{t.batch_size} images per step = {per_replica} per replica in {t.accumulation_steps} micro-batch(es), "
        f"{t.mixed_precision}, steps {start_step} -> {t.max_steps}"
    )

    history, nonfinite_in_a_row, status = [], 0, "finished"
    iterator = iter(distributed_train_dataset(config, strategy, start_step))
    current = start_step
    while current < t.max_steps:
        batch = next(iterator)
        results = train_step(batch)
        current += 1
        scalars = reporter.step_done(current, results)
        history.append({"step": current, **scalars})
        if scalars["applied"] == 0.0:
            nonfinite_in_a_row += 1
            reporter.message(
                f"step {current}: non-finite loss ({scalars['loss_total']}), update skipped "
                f"({nonfinite_in_a_row} in a row, stopping at {t.max_nonfinite_steps})"
            )
            if nonfinite_in_a_row >= t.max_nonfinite_steps:
                status = "stopped_nonfinite"
                break
            continue
        nonfinite_in_a_row = 0
        if current % t.checkpoint_every == 0 or current == t.max_steps:
            last_checkpoint = checkpoints.save()
            images = strategy.experimental_local_results(batch["image"])[0]
            reporter.render_predictions(current, model, np.asarray(images))
    if status == "finished" and chief:
        # Keras weights of the final model, for test.py / test_map.py --weights with this run's config.json.
        model.save_weights(os.path.join(t.output_dir, FINAL_WEIGHTS))
    if status == "stopped_nonfinite":
        reporter.message(
            f"stopped after {nonfinite_in_a_row} non-finite losses in a row at step {current}; the last good "
            f"checkpoint is {last_checkpoint}"
        )
    reporter.close()
    return TrainResult(status, current, last_checkpoint, history, model)

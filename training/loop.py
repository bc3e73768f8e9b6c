"""The training run: build everything under the strategy, initialise or resume, loop, checkpoint, report.

from training.loop import train
result = train(config)          # resumes from config.train.output_dir if it holds a checkpoint
print(result.status, result.step, result.last_checkpoint)
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from config import ConfigError, Mask2FormerConfig
from data.pipeline import build_dataset, load_categories
from inference.loading import save_model
from inference.postprocess import PostProcessor
from losses import build_criterion
from model import build_model
from training.checkpointing import (
    CONFIG_FILE,
    KerasCheckpoints,
    TrainingCheckpoints,
    check_output_dir,
    checkpoint_step,
    latest_checkpoint,
    variable_bytes,
)
from training.distribution import distributed_train_dataset, is_chief, replica_batch_size, select_strategy
from training.initialization import initialize_weights
from training.keras_step import KerasTrainStep
from training.optimizer import build_optimizer
from training.reporting import TrainingReporter
from training.resume import check_resume_config
from training.schedules import build_schedule
from training.train_step import TrainStep

FINAL_WEIGHTS = "model.weights.h5"
FINAL_MODEL = "model.keras"


@dataclass
class TrainResult:
    """status: "finished", "stopped_nonfinite" or "interrupted"; step: optimizer steps done; last_checkpoint:
    path or None; history: the scalars of each step of this process; model: the trained model;
    signal_name: "SIGINT" or "SIGTERM" when interrupted."""

    status: str
    step: int
    last_checkpoint: str | None
    history: list[dict] = field(default_factory=list)
    model: keras.Model | None = None
    signal_name: str | None = None


class StopRequests:
    """SIGINT and SIGTERM while training: the first is remembered so that the loop saves a checkpoint at the
    current step and stops; a second one stops at once (KeyboardInterrupt). Handlers are restored on exit.
    Only the main thread can install handlers; elsewhere this does nothing."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(number).name

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def train(
    config: Mask2FormerConfig, *, resume: bool = True, allow_config_change: bool = False, criterion=None
) -> TrainResult:
    """Trains `config` until `train.max_steps` optimizer steps, or until `train.max_nonfinite_steps`
    non-finite losses in a row, or until SIGINT / SIGTERM (a checkpoint at the current step, then
    status "interrupted"). `resume`: continue from the newest checkpoint in `train.output_dir` (if there
    is none, start fresh); False refuses a folder that already has one. A resumed folder's config.json
    must equal `config` but for `config.RESUMABLE_CHANGES`, unless `allow_config_change`.
    `criterion` replaces `build_criterion(config)` (tests inject faults with it). A run without
    `data.seed` gets `train.seed`, so that its input can be resumed at the same position."""
    with StopRequests() as stop:
        return _train(config, resume, allow_config_change, criterion, stop)


def _next_batch(iterator, config):
    """The next training batch; empty shards are a ValueError naming data.train_files."""
    try:
        return next(iterator)
    except (StopIteration, tf.errors.OutOfRangeError):
        raise ValueError(
            f"data.train_files {config.data.train_files} yields no training examples (empty shards?); "
            "check the converter's summary and the pattern"
        ) from None


def _train(config, resume, allow_config_change, criterion, stop: StopRequests) -> TrainResult:
    config.validate()
    t = config.train
    if config.data.seed is None:
        config.data.seed = t.seed
    newest = latest_checkpoint(t.output_dir)
    if newest and not resume:
        raise ValueError(
            f"{t.output_dir} already holds checkpoints; resume it (drop --no-resume) or set another train.output_dir"
        )
    check_output_dir(t.output_dir)  # write access now (every worker writes there), free space once the model exists
    config_changes = []
    if newest:
        config_changes = check_resume_config(os.path.join(t.output_dir, CONFIG_FILE), config, allow_config_change)
        done = checkpoint_step(newest)
        if done > t.max_steps:
            raise ConfigError(
                f"{t.output_dir} is already at step {done}, past train.max_steps={t.max_steps}; "
                "set a larger train.max_steps, or another train.output_dir for a new run"
            )
    keras.utils.set_random_seed(t.seed)

    run = (_tensorflow_run if keras.backend.backend() == "tensorflow" else _keras_run)(config, criterion)
    model, chief = run.model, run.chief
    if chief:  # before any work: a checkpoint, its successor being written, the final weights and model
        # (a checkpoint holds the variables and Adam's two moments of the trainable ones)
        model_bytes, trainable_bytes = variable_bytes(model.variables), variable_bytes(model.trainable_variables)
        check_output_dir(t.output_dir, 2 * (model_bytes + 2 * trainable_bytes) + 2 * model_bytes + 2**26)
    last_checkpoint, start_step = run.restore_latest() if resume else (None, 0)
    init_summary = f"resumed from {last_checkpoint} at step {start_step}" if last_checkpoint else None
    if init_summary is None:
        init_summary = initialize_weights(model, t)
    run.weights_changed()
    # the first batch before anything is written: empty shards leave the run folder as it was
    iterator = run.batches(start_step)
    first_batch = _next_batch(iterator, config) if start_step < t.max_steps else None
    if chief:
        config.save(os.path.join(t.output_dir, CONFIG_FILE))

    categories = load_categories(config, config.data.train_files)
    reporter = TrainingReporter(
        t.output_dir,
        start_step=start_step,
        max_steps=t.max_steps,
        images_per_step=t.batch_size,
        log_every=t.log_every,
        chief=chief,
        class_names=categories.names,
        postprocessor=PostProcessor.from_config(config, isthing=categories.isthing) if run.render else None,
    )
    if config_changes:
        reporter.message(f"config changes accepted on resume: {'; '.join(config_changes)}")
    reporter.message(
        f"{init_summary}; {run.description}, {t.batch_size} images per step in {t.accumulation_steps} "
        f"micro-batch(es) per replica, {t.mixed_precision}, steps {start_step} -> {t.max_steps}"
    )

    history, nonfinite_in_a_row, status = [], 0, "finished"
    current = saved_step = start_step
    while current < t.max_steps and stop.signal_name is None:
        batch, first_batch = (first_batch, None) if first_batch is not None else (_next_batch(iterator, config), None)
        num_targets = batch.pop("num_targets")
        results = run.step(batch, current)
        current += 1
        scalars = reporter.step_done(current, results)
        # the local replicas' counts (components of a distributed value; one array otherwise)
        reporter.targets_over_limit(tf.nest.flatten(num_targets, expand_composites=True), config.data.max_instances)
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
            last_checkpoint, saved_step = run.save(current), current
            reporter.render_predictions(current, model, run.first_images(batch))
    if stop.signal_name is not None and status == "finished" and current < t.max_steps:
        status = "interrupted"
        if current != saved_step:
            last_checkpoint = run.save(current)
    run.sync()
    if status == "finished" and chief:
        # Keras weights of the final model, for test.py / test_map.py --weights with this run's config.json,
        # and a float32 .keras carrying the inference settings and class names, for --model.
        model.save_weights(os.path.join(t.output_dir, FINAL_WEIGHTS))
        final = build_model(config)
        final.set_weights(model.get_weights())
        save_model(final, os.path.join(t.output_dir, FINAL_MODEL), config, categories)
    if status == "stopped_nonfinite":
        reporter.message(
            f"stopped after {nonfinite_in_a_row} non-finite losses in a row at step {current}; the last good "
            f"checkpoint is {last_checkpoint}"
        )
    reporter.close()
    return TrainResult(status, current, last_checkpoint, history, model, stop.signal_name)


@dataclass
class _Run:
    """What differs between the TensorFlow run (strategies, `TrainStep`, `tf.train.Checkpoint`) and the
    JAX / PyTorch run (one device, `KerasTrainStep`, `KerasCheckpoints`)."""

    model: keras.Model
    chief: bool
    render: bool  # whether predictions are drawn on the host (not on TPU)
    description: str  # replicas and backend, for the first log line
    step: object  # (batch, steps done) -> dict of scalars
    save: object  # steps done -> checkpoint path
    restore_latest: object  # () -> (path or None, step)
    batches: object  # start step -> iterator of batches
    first_images: object  # batch -> (b, H, W, 3) numpy images of the first replica
    sync: object = lambda: None  # writes the step's state into the Keras variables
    weights_changed: object = lambda: None  # the Keras variables were restored or initialised


def _tensorflow_run(config, criterion) -> _Run:
    t = config.train
    strategy = select_strategy(t)
    per_replica = replica_batch_size(config, strategy)
    with strategy.scope():
        model = build_model(config, dtype=keras.DTypePolicy(t.mixed_precision))
        model.pixel_decoder.set_recompute(t.recompute_encoder)
        step = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="step", aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA
        )
        schedule = build_schedule(t)
        optimizer = build_optimizer(t, model, learning_rate=lambda: schedule(step))
    chief = is_chief(strategy)
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
    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    train_step = TrainStep(
        model,
        criterion or build_criterion(config, dynamic_pairs=not (t.jit_compile or on_tpu)),
        optimizer,
        strategy,
        step,
        accumulation_steps=t.accumulation_steps,
        replica_batch_size=per_replica,
        seed=t.seed,
        learning_rate=schedule,
        jit_compile=t.jit_compile,
    )

    def restore_latest():
        path = checkpoints.restore_latest()
        return path, int(step.numpy())

    return _Run(
        model=model,
        chief=chief,
        render=not on_tpu,
        description=f"TensorFlow, {strategy.num_replicas_in_sync} replica(s) ({type(strategy).__name__})",
        step=lambda batch, done: train_step(batch),
        save=lambda done: checkpoints.save(),
        restore_latest=restore_latest,
        batches=lambda start: iter(distributed_train_dataset(config, strategy, start)),
        first_images=lambda batch: np.asarray(strategy.experimental_local_results(batch["image"])[0]),
    )


def _keras_run(config, criterion) -> _Run:
    t = config.train
    backend = keras.backend.backend()
    devices = _data_parallel_devices(t)
    if devices:  # before the model is built: its variables are created replicated
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    model = build_model(config, dtype=keras.DTypePolicy(t.mixed_precision))
    model.pixel_decoder.set_recompute(t.recompute_encoder)
    schedule = build_schedule(t)
    optimizer = build_optimizer(t, model, learning_rate=t.learning_rate)
    checkpoints = KerasCheckpoints(t.output_dir, model=model, optimizer=optimizer, keep=t.keep_checkpoints)
    # JAX compiles static shapes: all of the B x R point-sampled rows, the unmatched ones masked.
    criterion = criterion or build_criterion(config, dynamic_pairs=backend != "jax")
    train_step = KerasTrainStep(
        model, criterion, optimizer, schedule, accumulation_steps=t.accumulation_steps, seed=t.seed
    )

    def save(done):
        train_step.sync()
        return checkpoints.save(done)

    def batches(start):
        dataset = build_dataset(
            config, "train", batch_size=t.batch_size, skip_examples=start * t.batch_size, bucket_instances=True
        )
        return dataset.as_numpy_iterator()

    return _Run(
        model=model,
        chief=True,
        render=True,
        description=f"{backend}, " + (f"{len(devices)} devices (DataParallel)" if devices else "1 device"),
        step=train_step,
        save=save,
        restore_latest=checkpoints.restore_latest,
        batches=batches,
        first_images=lambda batch: batch["image"],
        sync=train_step.sync,
        weights_changed=train_step.reload,
    )


def _data_parallel_devices(t) -> list:
    """The local devices a JAX run splits its batches over (`keras.distribution.DataParallel`): with
    train.distribution "auto" or "mirrored", every local device when there are several and the batch's
    micro-batches split evenly over them; [] for one device (and always on PyTorch)."""
    if t.distribution in ("multi_worker", "tpu"):
        raise ConfigError(
            f"train.distribution {t.distribution!r} is a TensorFlow strategy; train with KERAS_BACKEND=tensorflow "
            "or set train.distribution to 'auto'"
        )
    if keras.backend.backend() != "jax" or t.distribution == "default":
        return []
    devices = keras.distribution.list_devices()
    if len(devices) < 2 or t.batch_size % (len(devices) * t.accumulation_steps):
        return []
    return devices

"""One optimizer step: k accumulation micro-steps per replica, one all-reduce, clipping, one update.

    step_fn = TrainStep(model, criterion, optimizer, strategy, step, accumulation_steps=2, ...)
    results = step_fn(distributed_batch)  # dict of float32 scalars (losses of the whole global batch, ...)

Exactness (gradient accumulation and replicas equal one step on the whole global batch):
  - the normalisers `num_masks` and `class_weight_sum` are counted over all micro-batches of the step and
    all-reduce-averaged over replicas before any loss is computed; each micro-batch loss is then its share
    of the full-batch loss, and the shares are SUMMED (see losses/criterion.py);
  - the gradients are summed over micro-steps and averaged over replicas once; the global norm is clipped
    after that, once, over all gradients;
  - the criterion's random points of image i (position in the global batch) come from the seed
    (train.seed, step, i), so they do not depend on how the batch is split;
  - a non-finite total loss skips the update (the step counter still advances: the data was consumed).
The class cross-entropy denominator is global too (the official code divides by each replica's own
weight sum), so that every split of the batch trains alike.

The step is one `tf.function`, traced once: the target slot count M (the pipeline pads each batch's
targets to one of a few buckets, see data/pipeline.py; local replicas of a step are padded to the
largest of theirs here) is left open in the trace, so every bucket runs the same graph (tracing and
optimising the R50 step takes about 2 minutes on 2 CPU cores). With `jit_compile` (XLA) or a criterion
without `dynamic_pairs` (TPU) shapes must be static, and the step traces once per M. The micro-steps
are a `tf.while_loop` whose carried tensors are the accumulation buffers, the micro-batch comes from
reshaping the replica's batch to (k, b, ...), and nothing else depends on Python values that change
between steps.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from losses.criterion import SetPoints
from losses.point_sampling import dim
from training.optimizer import global_norm, inner_optimizer


def loss_names(num_decoder_layers: int) -> list[str]:
    """The criterion's loss keys for 1 + num_decoder_layers prediction sets, `loss_total` last."""
    suffixes = [""] + [f"_{i}" for i in range(num_decoder_layers)]
    return [f"loss_{term}{s}" for s in suffixes for term in ("ce", "mask", "dice")] + ["loss_total"]


SLOT_KEYS = ("masks", "labels", "valid")  # the batch entries whose axis 1 is the target slots


def _any_slot_count(batch) -> dict:
    """The type of `batch` (tensors or a strategy's per-replica values) with the slot axis left open."""

    def relax(spec):
        return tf.TensorSpec([spec.shape[0], None, *spec.shape[2:]], spec.dtype)

    specs = {}
    for key, value in batch.items():
        spec = tf.type_spec_from_value(value)
        if key in SLOT_KEYS:  # a tensor's spec, or a `PerReplicaSpec` of one spec per local replica
            parts = [relax(part) for part in tf.nest.flatten(spec, expand_composites=True)]
            spec = parts[0] if isinstance(spec, tf.TensorSpec) else type(spec)(*parts)
        specs[key] = spec
    return specs


class TrainStep:
    """The training step of `model` with `criterion` and `optimizer` under `strategy`.

    Args:
        model: built `Mask2Former` (created under `strategy.scope()`).
        criterion: `SetCriterion`.
        optimizer: from `training.optimizer.build_optimizer` (clips inside; maybe a `LossScaleOptimizer`).
        strategy: `tf.distribute.Strategy`.
        step: int64 `tf.Variable`, optimizer steps done (created under the scope); advanced by each call.
        accumulation_steps: k. replica_batch_size: images per replica per step (k micro-batches).
        seed: int, base of the criterion's random points.
        learning_rate: callable `step -> lr` (for the report).
        jit_compile: compile each micro-step (forward, loss, backward) with XLA.

    Call: `step_fn(batch)` with a distributed batch of `image` (b*k, H, W, 3), `masks`, `labels`, `valid`
    per replica. Returns a dict of float32 scalars: every loss term of the global batch, `grad_norm`
    (before clipping), `learning_rate`, `loss_scale` and `applied` (1.0, or 0.0 for a skipped update).
    """

    def __init__(
        self,
        model,
        criterion,
        optimizer,
        strategy,
        step,
        *,
        accumulation_steps: int,
        replica_batch_size: int,
        seed: int,
        learning_rate,
        jit_compile: bool = False,
    ):
        if jit_compile and criterion.dynamic_pairs:
            raise ValueError(
                "TrainStep(jit_compile=True) compiles static shapes: build the criterion with "
                "build_criterion(config, dynamic_pairs=False)"
            )
        if replica_batch_size % accumulation_steps:
            raise ValueError(
                f"{replica_batch_size} images per replica do not split into {accumulation_steps} micro-batches"
            )
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.strategy = strategy
        self.step = step
        self.accumulation_steps = accumulation_steps
        self.replica_batch_size = replica_batch_size
        self.micro_batch_size = replica_batch_size // accumulation_steps
        self.seed = seed
        self.learning_rate = learning_rate
        self.loss_names = loss_names(model.num_decoder_layers)
        self.loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        self._micro_step = (
            tf.function(self._micro_step_eager, jit_compile=True, autograph=False)
            if jit_compile
            else self._micro_step_eager
        )
        self._function = tf.function(
            self._train_step, autograph=False
        )  # no Python control flow on tensors: AutoGraph would only add tracing time

    def __call__(self, batch) -> dict[str, tf.Tensor]:
        batch = self._same_slots(batch)
        if self.criterion.dynamic_pairs and self._function.experimental_get_tracing_count() == 0:
            self._function.get_concrete_function(_any_slot_count(batch))  # later batches reuse this trace
        return self._function(batch)

    def _same_slots(self, batch):
        """Pads every local replica's targets to the largest slot count among them (one trace per step)."""
        if self.strategy.num_replicas_in_sync == 1:
            return batch
        local = {key: self.strategy.experimental_local_results(value) for key, value in batch.items()}
        slots = max(v.shape[1] for v in local["valid"])
        if all(v.shape[1] == slots for v in local["valid"]):
            return batch

        def pad(key, value):
            if key not in ("masks", "labels", "valid"):
                return value
            with tf.device(value.device):
                return tf.pad(value, [[0, 0], [0, slots - value.shape[1]]] + [[0, 0]] * (value.shape.rank - 2))

        padded = {key: [pad(key, v) for v in values] for key, values in local.items()}
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: {key: values[context.replica_id_in_sync_group] for key, values in padded.items()}
        )

    def gradients(self, batch):
        """(all-reduced gradients, loss dict) of one step without applying them, from the first replica."""
        step = self.step.read_value()
        grads, losses, _ = self.strategy.run(self._replica_gradients, args=(batch, step))
        return [self._first(g) for g in grads], {k: self._first(v) for k, v in losses.items()}

    @property
    def tracing_count(self) -> int:
        """How many times the step was traced (1 after any number of calls with same-shaped batches)."""
        return self._function.experimental_get_tracing_count()

    # ------------------------------------------------------------------ cross-replica
    def _train_step(self, batch):
        step = self.step.read_value()
        grads, losses, grad_norm = self.strategy.run(self._replica_gradients, args=(batch, step))
        losses = {k: self._first(v) for k, v in losses.items()}
        finite = tf.math.is_finite(losses["loss_total"])
        # The update runs in a replica context (the optimizer's merge calls need one), under a cond taken
        # in the cross-replica context, as `LossScaleOptimizer` does.
        applied = tf.cond(finite, lambda: self._apply(grads, grad_norm), lambda: tf.constant(0.0))
        results = {
            **losses,
            "grad_norm": self._first(grad_norm),
            "learning_rate": tf.cast(self.learning_rate(step), tf.float32),
            "loss_scale": tf.cast(self._loss_scale(), tf.float32),
            "applied": applied,
        }
        with tf.control_dependencies([applied]):
            self.step.assign_add(1)
        return results

    def _apply(self, grads, grad_norm):
        def apply(grads, grad_norm):
            with inner_optimizer(self.optimizer).given_gradient_norm(grad_norm):
                self.optimizer.apply(grads, self.model.trainable_variables)

        self.strategy.run(apply, args=(grads, grad_norm))
        return tf.constant(1.0)

    def _first(self, value):
        return self.strategy.experimental_local_results(value)[0]

    def _loss_scale(self):
        return self.optimizer.dynamic_scale if self.loss_scaling else tf.constant(1.0)

    # ------------------------------------------------------------------------ replica
    def _replica_gradients(self, batch, step):
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync
        k, b = self.accumulation_steps, self.micro_batch_size
        num_queries = self.model.num_queries

        # Normalisers of the whole global batch (all micro-batches, all replicas), averaged per replica.
        local = self.criterion.local_normalizers(batch["valid"], num_queries)
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [local["num_masks"], local["class_weight_sum"]])
        normalizers = {"num_masks": summed[0] / replicas, "class_weight_sum": summed[1] / replicas}

        micro_batches = {
            key: tf.reshape(value, [k, b, *(dim(value, axis) for axis in range(1, value.shape.rank))])
            for key, value in batch.items()
        }
        first_image = tf.cast(context.replica_id_in_sync_group, tf.int64) * self.replica_batch_size
        variables = self.model.trainable_variables

        def micro_batches_at(i):
            return {key: value[i] for key, value in micro_batches.items()}

        def body(i, grads_sum, losses_sum):
            grads, losses = self._micro_step(
                micro_batches_at(i), step, first_image + tf.cast(i * b, tf.int64), normalizers
            )
            grads_sum = [a + g for a, g in zip(grads_sum, grads, strict=True)]
            losses_sum = {name: losses_sum[name] + losses[name] for name in self.loss_names}
            return i + 1, grads_sum, losses_sum

        if k == 1:  # no zero accumulators: graph constant folding would materialise one per variable
            grads, losses = self._micro_step(micro_batches_at(0), step, first_image, normalizers)
        else:
            zeros = (
                [tf.zeros(v.shape, v.dtype) for v in variables],
                {name: tf.constant(0.0) for name in self.loss_names},
            )
            _, grads, losses = tf.while_loop(lambda i, *_: i < k, body, (tf.constant(0), *zeros))

        grads = context.all_reduce(tf.distribute.ReduceOp.MEAN, grads)
        losses = dict(
            zip(self.loss_names, context.all_reduce(tf.distribute.ReduceOp.MEAN, list(losses.values())), strict=True)
        )
        grad_norm = global_norm(grads) / tf.cast(self._loss_scale(), tf.float32)  # the optimizer clips with it
        return grads, losses, grad_norm

    def _micro_step_eager(self, micro, step, first_image, normalizers):
        """Forward, loss and backward of one micro-batch -> (gradients, loss dict)."""
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.model(micro["image"], training=True)
            points = self._points(step, first_image)
            losses = self.criterion(outputs, micro, points=points, **normalizers)
            scaled = losses["loss_total"] * tf.cast(self._loss_scale(), tf.float32)
        grads = tape.gradient(scaled, variables)
        grads = [
            tf.zeros(v.shape, v.dtype) if g is None else tf.cast(g, v.dtype)
            for g, v in zip(grads, variables, strict=True)
        ]
        return grads, {name: losses[name] for name in self.loss_names}

    def _points(self, step, first_image) -> list[SetPoints]:
        """The criterion's points for images first_image .. first_image + b - 1 of the global batch."""
        fold_in = tf.random.experimental.stateless_fold_in
        step_seed = fold_in(tf.constant([self.seed, 0], tf.int64), step)
        seeds = tf.stack([fold_in(step_seed, first_image + j) for j in range(self.micro_batch_size)])
        return self.criterion.draw_points(seeds, self.model.num_decoder_layers + 1)

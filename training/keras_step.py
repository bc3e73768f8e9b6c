"""The training step on JAX (one `jax.jit`, state buffers donated) and on PyTorch (eager).

    step_fn = KerasTrainStep(model, criterion, optimizer, schedule, accumulation_steps=2, seed=42)
    results = step_fn(batch, step)   # batch: dict of numpy arrays (the global batch); step: optimizer steps done
    step_fn.sync()                   # writes the state back into the Keras variables (before saving)

The same forward pass, criterion (losses/, keras.ops) and optimizer (training/optimizer.py) as the
TensorFlow `TrainStep`, and the same exactness rules: the normalisers `num_masks` and `class_weight_sum`
are counted over the whole batch before any micro-batch loss, the micro-batch losses and gradients are
summed, the global norm is clipped once, a non-finite total loss skips the update (the step still
counts), and image i's random points come from the seed (train.seed, step, i) whatever the split.
JAX traces the step once per target-slot bucket (static shapes: the criterion samples all B x R rows,
the unmatched ones masked); PyTorch runs it eagerly and samples the matched pairs only.

Devices: PyTorch trains on one. On JAX, under a `keras.distribution.DataParallel` (set before the model is
built, so that its variables are replicated) the batch and its seeds are split over the devices along
the image axis; the step is still written for the global batch, so XLA all-reduces the gradients and the
criterion's normalisers and the result equals the one-device step's. The TensorFlow `TrainStep` keeps
the tf.distribute strategies.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from losses import random
from training.optimizer import global_norm, inner_optimizer


def _shapes(batch: dict) -> tuple:
    return tuple((key, tuple(np.shape(value)), str(np.asarray(value).dtype)) for key, value in sorted(batch.items()))


def _index_of(variables, variable) -> int | None:
    return next((i for i, v in enumerate(variables) if v is variable), None)


class KerasTrainStep:
    """The training step of `model` with `criterion` and `optimizer` on the JAX or PyTorch backend.

    Args:
        model: built `Mask2Former`. criterion: `SetCriterion` (`dynamic_pairs=False` for JAX).
        optimizer: from `training.optimizer.build_optimizer` with a float learning rate (set per step here).
        schedule: callable `step -> learning rate`.
        accumulation_steps: k micro-batches per step. seed: int, base of the criterion's random points.
    Call: `step_fn(batch, step)` with numpy `image` (B, H, W, 3), `masks` (B, M, H, W), `labels`, `valid`;
    returns a dict of Python floats: every loss term, `grad_norm` (before clipping), `learning_rate`,
    `loss_scale` and `applied` (1.0, or 0.0 for a skipped update).
    """

    def __init__(self, model, criterion, optimizer, schedule, *, accumulation_steps: int = 1, seed: int = 0):
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.schedule = schedule
        self.accumulation_steps = accumulation_steps
        self.seed = seed
        self.num_sets = model.num_decoder_layers + 1
        self.backend = keras.backend.backend()
        self.loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        self._lr_index = _index_of(optimizer.variables, inner_optimizer(optimizer)._learning_rate)
        self._scale_index = _index_of(optimizer.variables, optimizer.dynamic_scale) if self.loss_scaling else None
        if self.backend == "jax":
            import jax

            self._distribution = keras.distribution.distribution()  # None: one device
            self._state = self._read_state()
            self._jit_step = jax.jit(self._jax_step, donate_argnums=0)
            self._compiled = {}  # batch shapes -> ahead-of-time compiled step
        elif self.backend != "torch":
            raise ValueError(f"KerasTrainStep runs on JAX and PyTorch; use TrainStep on {self.backend!r}")

    # ------------------------------------------------------------------------------ common
    def _seeds(self, step: int, batch_size: int) -> np.ndarray:
        return random.image_seeds(self.seed, step, batch_size)

    def _micro_batches(self, batch: dict, seeds):
        k = self.accumulation_steps
        size = len(seeds) // k
        for i in range(k):
            part = slice(i * size, (i + 1) * size)
            yield {key: value[part] for key, value in batch.items()}, seeds[part]

    def _losses(self, outputs, micro, seeds, normalizers):
        points = self.criterion.draw_points(seeds, self.num_sets)
        return self.criterion(outputs, micro, points=points, **normalizers)

    def __call__(self, batch: dict, step: int) -> dict[str, float]:
        if len(batch["image"]) % self.accumulation_steps:
            raise ValueError(f"{len(batch['image'])} images do not split into {self.accumulation_steps} micro-batches")
        seeds = self._seeds(step, len(batch["image"]))
        learning_rate = float(ops.convert_to_numpy(self.schedule(step)))
        if self.backend == "jax":
            compiled = self._compiled.get(_shapes(batch), self._jit_step)
            self._state, results = compiled(self._state, *self._placed(batch, seeds), np.float32(learning_rate))
        else:
            results = self._torch_step(batch, seeds, learning_rate)
        return {key: float(value) for key, value in results.items()}

    # ---------------------------------------------------------------------------------- JAX
    def compile(self, batch: dict) -> dict[str, int]:
        """JAX: compiles the step for `batch`'s shapes before its first call (which then runs at once);
        returns XLA's memory analysis of it in bytes: `temp` (what a step allocates beyond its inputs and
        outputs), `arguments`, `outputs`, `aliased` (outputs written into the donated state)."""
        seeds = self._seeds(0, len(batch["image"]))
        compiled = self._jit_step.lower(self._state, *self._placed(batch, seeds), np.float32(0.0)).compile()
        self._compiled[_shapes(batch)] = compiled
        analysis = compiled.memory_analysis()
        return {
            "temp": analysis.temp_size_in_bytes,
            "arguments": analysis.argument_size_in_bytes,
            "outputs": analysis.output_size_in_bytes,
            "aliased": analysis.alias_size_in_bytes,
        }

    def _placed(self, batch: dict, seeds):
        """The batch and seeds as the step reads them: numpy on one device; under a distribution, split
        along the image axis over its devices."""
        if self._distribution is None:
            return batch, seeds
        import jax

        def place(value):
            return jax.device_put(value, self._distribution.get_data_layout(np.shape(value)).backend_layout)

        return {key: place(value) for key, value in batch.items()}, place(seeds)

    def _read_state(self):
        return (
            [v.value for v in self.model.trainable_variables],
            [v.value for v in self.model.non_trainable_variables],
            [v.value for v in self.optimizer.variables],
        )

    def sync(self) -> None:
        """Writes the step's state into the model's and optimizer's Keras variables (JAX; a no-op on torch)."""
        if self.backend != "jax":
            return
        variables = (self.model.trainable_variables, self.model.non_trainable_variables, self.optimizer.variables)
        for group, values in zip(variables, self._state, strict=True):
            for variable, value in zip(group, values, strict=True):
                variable.assign(value)

    def reload(self) -> None:
        """Reads the Keras variables into the step's state (after they were restored from a checkpoint)."""
        if self.backend == "jax":
            self._state = self._read_state()

    def _jax_step(self, state, batch, seeds, learning_rate):
        import jax

        trainable, non_trainable, optimizer_values = state
        scale = optimizer_values[self._scale_index] if self.loss_scaling else 1.0
        normalizers = self.criterion.local_normalizers(batch["valid"], self.model.num_queries)

        def loss_fn(trainable, non_trainable, micro, micro_seeds):
            outputs, non_trainable = self.model.stateless_call(trainable, non_trainable, micro["image"], training=True)
            losses = self._losses(outputs, micro, micro_seeds, normalizers)
            return losses["loss_total"] * scale, (losses, non_trainable)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        grads, losses = None, None
        for micro, micro_seeds in self._micro_batches(batch, seeds):
            (_, (micro_losses, non_trainable)), micro_grads = grad_fn(trainable, non_trainable, micro, micro_seeds)
            grads = micro_grads if grads is None else jax.tree.map(jax.numpy.add, grads, micro_grads)
            losses = micro_losses if losses is None else jax.tree.map(jax.numpy.add, losses, micro_losses)
        finite = jax.numpy.isfinite(losses["loss_total"])
        optimizer_values = list(optimizer_values)
        optimizer_values[self._lr_index] = learning_rate.astype(optimizer_values[self._lr_index].dtype)
        grad_norm = global_norm(grads) / scale
        with inner_optimizer(self.optimizer).given_gradient_norm(grad_norm):
            new_trainable, new_optimizer_values = self.optimizer.stateless_apply(optimizer_values, grads, trainable)
        keep = lambda new, old: jax.numpy.where(finite, new, old)  # noqa: E731
        trainable = jax.tree.map(keep, new_trainable, trainable)
        optimizer_values = jax.tree.map(keep, new_optimizer_values, optimizer_values)
        results = {
            **losses,
            "grad_norm": grad_norm,
            "learning_rate": learning_rate,
            "loss_scale": jax.numpy.asarray(scale, "float32"),
            "applied": finite.astype("float32"),
        }
        return (trainable, non_trainable, optimizer_values), results

    # -------------------------------------------------------------------------------- torch
    def _torch_step(self, batch, seeds, learning_rate):
        import torch

        variables = self.model.trainable_variables
        scale = float(ops.convert_to_numpy(self.optimizer.dynamic_scale)) if self.loss_scaling else 1.0
        normalizers = self.criterion.local_normalizers(ops.convert_to_tensor(batch["valid"]), self.model.num_queries)
        for v in variables:
            v.value.grad = None
        losses = None
        for micro, micro_seeds in self._micro_batches(batch, seeds):
            micro = {key: ops.convert_to_tensor(value) for key, value in micro.items()}
            outputs = self.model(micro["image"], training=True)
            micro_losses = self._losses(outputs, micro, micro_seeds, normalizers)
            (micro_losses["loss_total"] * scale).backward()
            micro_losses = {key: value.detach() for key, value in micro_losses.items()}
            losses = micro_losses if losses is None else {k: losses[k] + micro_losses[k] for k in losses}
        grads = [v.value.grad if v.value.grad is not None else torch.zeros_like(v.value) for v in variables]
        finite = bool(torch.isfinite(losses["loss_total"]))
        grad_norm = global_norm(grads) / scale
        if finite:
            self.optimizer.learning_rate = learning_rate
            with torch.no_grad(), inner_optimizer(self.optimizer).given_gradient_norm(grad_norm):
                self.optimizer.apply(grads, variables)
        for v in variables:
            v.value.grad = None
        return {
            **losses,
            "grad_norm": grad_norm,
            "learning_rate": learning_rate,
            "loss_scale": scale,
            "applied": float(finite),
        }

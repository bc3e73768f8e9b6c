"""AdamW with Mask2Former's parameter groups, and the official full-model gradient clipping.

Official recipe (Mask2Former `build_optimizer`, detectron2 `get_default_optimizer_params`):
  - AdamW, lr 1e-4, weight decay 0.05 (decoupled: `p -= lr * wd * p` before the Adam update), betas
    (0.9, 0.999), eps 1e-8;
  - no weight decay on norm layers (LayerNorm, GroupNorm; the frozen BatchNorm is not trainable) and on
    `nn.Embedding`s: the transformer decoder's `query_feat`, `query_embed` and `level_embed` (the pixel
    decoder's `level_embed` is a plain parameter and does get weight decay; biases get it too), nor on
    Swin's `relative_position_bias_table`s;
  - the backbone's learning rate (and so its decay step `lr * wd`) x `backbone_lr_multiplier` (0.1);
  - one global-norm clip over all gradients at 0.01, `coef = min(1, max_norm / (norm + 1e-6))` as
    `torch.nn.utils.clip_grad_norm_`.

    optimizer = build_optimizer(config.train, model, learning_rate=lambda: schedule(step))
    optimizer.apply(grads, model.trainable_variables)   # inside strategy.run, grads already all-reduced
"""

from __future__ import annotations

import contextlib

import keras
from keras import ops

NORM_LAYERS = (keras.layers.LayerNormalization, keras.layers.GroupNormalization, keras.layers.BatchNormalization)


def _variable_ids(variables) -> set[int]:
    return {id(v) for v in variables}


def parameter_groups(model) -> dict[str, list]:
    """Trainable variables of a `Mask2Former` sorted into the official groups.

    Returns `no_weight_decay` (norm layers and the decoder's embeddings) and `backbone` (lr x multiplier),
    lists of variables (a variable may be in both).
    """
    no_decay = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, NORM_LAYERS):
            no_decay += layer.trainable_variables
    decoder = model.transformer_decoder
    no_decay += [decoder.query_feat, decoder.query_embed, decoder.level_embed]
    # Swin: the official build_optimizer also exempts `relative_position_bias_table` from weight decay.
    no_decay += [v for v in model.backbone.trainable_variables if v.path.endswith("relative_position_bias_table")]
    trainable = _variable_ids(model.trainable_variables)
    return {
        "no_weight_decay": [v for v in no_decay if id(v) in trainable],
        "backbone": list(model.backbone.trainable_variables),
    }


class GroupedAdamW(keras.optimizers.AdamW):
    """torch's AdamW as a Keras optimizer, with a learning-rate multiplier per variable, fed all-reduced
    gradients.

    Args:
        lr_multipliers: dict `id(variable) -> float` (others 1.0); scales both the Adam step and the
            decoupled weight decay of that variable, as a torch parameter group with its own lr.
        clip_norm: float or None; global-norm clipping of all gradients, torch's formula (applied after
            a `LossScaleOptimizer` has unscaled them).
        **kwargs: `keras.optimizers.AdamW` arguments.

    Gradients given to `apply` must already be averaged over replicas (the train step does it once):
    unlike the Keras default, `apply` does not all-reduce them again, so clipping sees the global norm.
    """

    def __init__(self, *, lr_multipliers=None, clip_norm=None, **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("GroupedAdamW implements torch's AdamW without amsgrad")
        super().__init__(**kwargs)
        self.clip_norm = clip_norm
        self._given_norm = None
        self._lr_multiplier_by_id = dict(lr_multipliers or {})
        self._lr_multipliers = []

    def build(self, variables):
        super().build(variables)
        self._lr_multipliers = [self._lr_multiplier_by_id.get(id(v), 1.0) for v in variables]

    def _multiplier(self, variable) -> float:
        return self._lr_multipliers[self._get_variable_index(variable)]

    def update_step(self, gradient, variable, learning_rate):
        """torch's Adam step: `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.

        (Keras adds eps to the uncorrected sqrt(v); with gradients clipped to a global norm of 0.01,
        sqrt(v) is near eps in the first steps and the two differ by tens of percent.)
        """
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype) * self._multiplier(variable)
        gradient = ops.cast(gradient, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, (gradient - m) * (1 - beta_1))
        self.assign_add(v, (ops.square(gradient) - v) * (1 - beta_2))
        denominator = ops.sqrt(v) / ops.sqrt(1 - ops.power(beta_2, t)) + self.epsilon
        self.assign_sub(variable, lr / (1 - ops.power(beta_1, t)) * m / denominator)

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None or keras.backend.backend() == "tensorflow":
            return  # TensorFlow decays each variable in its fused update (`_distributed_tf_update_step`)
        for variable in variables:  # one device (JAX, PyTorch): plain assignments
            if self._use_weight_decay(variable):
                lr = ops.cast(self.learning_rate, variable.dtype) * self._multiplier(variable)
                variable.assign(variable - variable * ops.cast(self.weight_decay, variable.dtype) * lr)

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        """TensorFlow: per variable, the decoupled weight decay and one fused `ResourceApplyAdam` kernel, in
        the strategy's cross-replica update (a few graph ops per variable instead of ~30: the step traces
        and optimises faster, and the update reads each tensor once).

        `ResourceApplyAdam` computes `p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps_hat)`; with
        `eps_hat = eps * sqrt(1 - b2^t)` that is torch's `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t)
        + eps)` exactly (up to float rounding). Its moments are `m += (g - m) * (1 - b1)`, as torch's.
        """
        import tensorflow as tf

        t = tf.cast(self.iterations + 1, "float32")
        beta_1_power, beta_2_power = tf.pow(float(self.beta_1), t), tf.pow(float(self.beta_2), t)
        epsilon = self.epsilon * tf.sqrt(1.0 - beta_2_power)
        learning_rate = tf.cast(learning_rate, "float32")
        weight_decay = 0.0 if self.weight_decay is None else float(self.weight_decay)
        scalars = {}  # (multiplier, dtype) -> (lr, decay factor): shared by the variables of a group

        def update(variable, gradient, m, v, lr, decay):
            if decay is not None:
                variable.assign_sub(variable * decay)
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=tf.cast(beta_1_power, variable.dtype),
                beta2_power=tf.cast(beta_2_power, variable.dtype),
                lr=lr,
                beta1=tf.cast(self.beta_1, variable.dtype),
                beta2=tf.cast(self.beta_2, variable.dtype),
                epsilon=tf.cast(epsilon, variable.dtype),
                grad=tf.cast(gradient, variable.dtype),
            )

        for gradient, variable in grads_and_vars:
            index = self._get_variable_index(variable)
            key = (self._lr_multipliers[index], variable.dtype)
            if key not in scalars:
                lr = tf.cast(learning_rate * key[0], variable.dtype)
                scalars[key] = lr, lr * tf.cast(weight_decay, variable.dtype)
            lr, decay = scalars[key]
            distribution.extended.update(
                variable,
                update,
                args=(
                    gradient,
                    self._momentums[index].value,
                    self._velocities[index].value,
                    lr,
                    decay if weight_decay and self._use_weight_decay(variable) else None,
                ),
                group=False,
            )

    @contextlib.contextmanager
    def given_gradient_norm(self, norm):
        """Within it, `apply` clips with `norm`, the global norm of the (unscaled) gradients it gets, which
        the training step has computed already, instead of computing it a second time."""
        self._given_norm = norm
        try:
            yield
        finally:
            self._given_norm = None

    def _clip_gradients(self, grads):
        if self.clip_norm is None:
            return grads
        return clip_by_global_norm(grads, self.clip_norm, norm=self._given_norm)[0]

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)  # the train step has all-reduced them already


def build_optimizer(train_config, model, learning_rate) -> keras.optimizers.Optimizer:
    """The official AdamW for `model` (built on its trainable variables); `learning_rate` is a float or a
    zero-argument callable (the schedule at the current step). Wrapped in a `LossScaleOptimizer` under
    `mixed_float16`. Create it under the strategy's scope."""
    t = train_config
    groups = parameter_groups(model)
    optimizer = GroupedAdamW(
        learning_rate=learning_rate,
        weight_decay=t.weight_decay,
        beta_1=t.adam_beta1,
        beta_2=t.adam_beta2,
        epsilon=t.adam_epsilon,
        lr_multipliers={id(v): t.backbone_lr_multiplier for v in groups["backbone"]},
        clip_norm=t.clip_grad_norm if t.clip_grad_norm > 0 else None,
    )
    optimizer.exclude_from_weight_decay(var_list=groups["no_weight_decay"])
    if t.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return optimizer


def inner_optimizer(optimizer) -> GroupedAdamW:
    """The `GroupedAdamW` of `build_optimizer`'s result (inside its `LossScaleOptimizer` under float16)."""
    return optimizer.inner_optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else optimizer


def clip_by_global_norm(grads, max_norm: float, norm=None):
    """torch's `clip_grad_norm_` over all gradients: returns (clipped grads, norm before clipping).
    `norm`: their global norm where the caller has it."""
    norm = global_norm(grads) if norm is None else norm
    coef = ops.minimum(1.0, max_norm / (norm + 1e-6))
    return [g * coef for g in grads], norm


def global_norm(grads):
    """sqrt of the sum of squares of all gradients, float32 (as `tf.linalg.global_norm`)."""
    return ops.sqrt(sum(ops.sum(ops.square(ops.cast(g, "float32"))) for g in grads))

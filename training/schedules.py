"""Learning-rate schedules, functions of the optimizer step (detectron2's WarmupMultiStep / Poly / Cosine).

    schedule = build_schedule(config.train)
    lr = schedule(step)  # step: int or int tensor, optimizer steps done so far (0 for the first update)

The step counts optimizer updates (one per `train.batch_size` images, however many accumulation
micro-batches make it), attempted ones included, as detectron2's scheduler that steps every iteration.
Warmup (`train.warmup_steps` > 0) multiplies any schedule by a factor rising linearly from
`WARMUP_START_FACTOR` to 1, as detectron2's linear warmup.
"""

from __future__ import annotations

import math

import keras
from keras import ops

WARMUP_START_FACTOR = 0.001  # detectron2's SOLVER.WARMUP_FACTOR default


class Mask2FormerSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`base_lr * warmup(step) * decay(step)` with decay one of:

    - "step": `decay_factor ** (number of decay_steps <= step)` (official COCO: x0.1 at 327,778 and 355,092);
    - "poly": `(1 - step / max_steps) ** poly_power` (official ADE20K: power 0.9);
    - "cosine": `0.5 * (1 + cos(pi * step / max_steps))`.

    Args:
        base_lr: float. kind: "step", "poly" or "cosine". max_steps: int. decay_steps: increasing ints.
        decay_factor: float. poly_power: float. warmup_steps: int (0 = none).
    """

    def __init__(
        self,
        *,
        base_lr: float,
        kind: str,
        max_steps: int,
        decay_steps=(),
        decay_factor: float = 0.1,
        poly_power: float = 0.9,
        warmup_steps: int = 0,
    ):
        if kind not in ("step", "poly", "cosine"):
            raise ValueError(f"schedule kind must be 'step', 'poly' or 'cosine', got {kind!r}")
        self.base_lr = base_lr
        self.kind = kind
        self.max_steps = max_steps
        self.decay_steps = tuple(int(s) for s in decay_steps)
        self.decay_factor = decay_factor
        self.poly_power = poly_power
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.kind == "step":
            passed = sum((ops.cast(step >= s, "float32") for s in self.decay_steps), ops.zeros_like(step))
            decay = ops.power(ops.cast(self.decay_factor, "float32"), passed)
        else:
            progress = ops.clip(step / float(self.max_steps), 0.0, 1.0)
            if self.kind == "poly":
                decay = ops.power(1.0 - progress, self.poly_power)
            else:
                decay = 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps > 0:
            alpha = ops.minimum(step / float(self.warmup_steps), 1.0)
            decay *= WARMUP_START_FACTOR * (1.0 - alpha) + alpha
        return self.base_lr * decay

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "kind": self.kind,
            "max_steps": self.max_steps,
            "decay_steps": self.decay_steps,
            "decay_factor": self.decay_factor,
            "poly_power": self.poly_power,
            "warmup_steps": self.warmup_steps,
        }


def build_schedule(train_config) -> Mask2FormerSchedule:
    """The schedule of `config.train` (learning_rate, lr_schedule, lr_decay_steps, ...)."""
    t = train_config
    return Mask2FormerSchedule(
        base_lr=t.learning_rate,
        kind=t.lr_schedule,
        max_steps=t.max_steps,
        decay_steps=t.lr_decay_steps,
        decay_factor=t.lr_decay_factor,
        poly_power=t.poly_power,
        warmup_steps=t.warmup_steps,
    )

"""What a run shows and leaves behind: a progress bar, TensorBoard, `metrics.jsonl` and rendered predictions.

- Progress (chief only): step, total loss and its final-set terms, lr, images/s, ETA. On a terminal a bar
  redrawn in place every step; in a file or CI log one plain line every `train.log_every` steps or
  minute (see `Progress`).
- TensorBoard (`output_dir/tensorboard`), every `train.log_every` steps: every loss term (all prediction
  sets), the learning rate, the gradient norm, the loss scale, images/s; at each checkpoint a few
  predictions on training images, drawn by `inference.visualize`.
- `output_dir/metrics.jsonl`: one JSON line per step (step, losses of the final set, total, lr,
  grad_norm, images_per_s, applied); a resumed run first drops the lines after its checkpoint, so the
  file always describes one uninterrupted run (the quickstart plots the learning curve from it).
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.framework.summary_pb2 import SummaryMetadata

from inference.postprocess import PostProcessor
from inference.visualize import draw_instances, draw_panoptic, draw_semantic

METRICS_FILE = "metrics.jsonl"
STEP_KEYS = ("loss_total", "loss_ce", "loss_mask", "loss_dice", "learning_rate", "grad_norm", "applied")


def _plugin_metadata(plugin: str) -> bytes:
    return SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=plugin)).SerializeToString()


# TensorBoard's scalar and image formats written with core TF (`tf.summary.scalar` / `image` need the
# tensorboard package installed; these files are read by it all the same).
SCALAR_METADATA = _plugin_metadata("scalars")
IMAGE_METADATA = _plugin_metadata("images")


def write_scalar(name: str, value: float, step: int) -> None:
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=SCALAR_METADATA)


def write_images(name: str, images: np.ndarray, step: int) -> None:
    """(N, H, W, 3) uint8 -> one image summary: [width, height, png_0, ...] as TensorBoard stores it."""
    pngs = [tf.io.encode_png(image).numpy() for image in images]
    height, width = images.shape[1:3]
    tensor = tf.constant([str(width).encode(), str(height).encode(), *pngs])
    tf.summary.write(name, tensor, step=step, metadata=IMAGE_METADATA)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Training progress for a person: a bar redrawn in place on a terminal, plain lines elsewhere.

    Terminal: `step 1359/2000 [=======>    ] loss 12.3456 ... ETA 0:03:21`, rewritten every step.
    File / pipe: the same text without the bar, one line every `every_steps` steps or `every_seconds`
    seconds (and at the first and last step). The ETA is a moving average of the last `window` step
    times, shown once `warmup` steps (tracing, compilation) are past.
    """

    def __init__(
        self,
        start_step: int,
        max_steps: int,
        *,
        stream=None,
        every_steps: int = 20,
        every_seconds: float = 60.0,
        warmup: int = 2,
        window: int = 50,
        clock=time.monotonic,
    ):
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start_step, self.max_steps = start_step, max_steps
        self.every_steps, self.every_seconds = max(1, every_steps), every_seconds
        self.warmup, self.clock = warmup, clock
        self.durations = collections.deque(maxlen=window)
        self._last_update = clock()
        self._last_line = None
        self._drawn = False

    def eta(self, step: int) -> str:
        if len(self.durations) == 0:
            return "--"
        return _duration((self.max_steps - step) * sum(self.durations) / len(self.durations))

    def text(self, step: int, scalars: dict, images_per_s: float) -> str:
        width = len(str(self.max_steps))
        bar = ""
        if self.tty:
            done = int(30 * (step - self.start_step) / max(1, self.max_steps - self.start_step))
            bar = " [" + "=" * max(0, done - 1) + (">" if done else "") + "." * (30 - done) + "]"
        return (
            f"step {step:{width}d}/{self.max_steps}{bar} loss {scalars['loss_total']:.4f} "
            f"ce {scalars['loss_ce']:.4f} mask {scalars['loss_mask']:.4f} dice {scalars['loss_dice']:.4f} "
            f"lr {scalars['learning_rate']:.2e} {images_per_s:.1f} images/s ETA {self.eta(step)}"
        )

    def update(self, step: int, scalars: dict, images_per_s: float) -> None:
        """Reports optimizer step `step` (counted after it)."""
        now = self.clock()
        if step - self.start_step > self.warmup:
            self.durations.append(now - self._last_update)
        self._last_update = now
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.text(step, scalars, images_per_s))
            self._drawn = True
        elif (
            step == self.start_step + 1
            or step == self.max_steps
            or step % self.every_steps == 0
            or self._last_line is None
            or now - self._last_line >= self.every_seconds
        ):
            self.stream.write(self.text(step, scalars, images_per_s) + "\n")
            self._last_line = now
        self.stream.flush()

    def clear(self) -> None:
        """Ends the bar's line on a terminal, so that a message starts on its own line."""
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False


def truncate_metrics(path: str, last_step: int) -> None:
    """Keeps the lines of `path` with step <= last_step (the resumed checkpoint's); no-op if absent."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


class TrainingReporter:
    """Progress bar, TensorBoard scalars and images, metrics.jsonl; everything is a no-op off the chief.

    Args:
        output_dir: str. start_step, max_steps: ints (optimizer steps). images_per_step: global batch.
        log_every: int, TensorBoard scalar period. chief: bool. class_names: list of str (rendering).
        postprocessor: `PostProcessor` for the rendered predictions (None: no images).
    """

    def __init__(
        self,
        output_dir: str,
        *,
        start_step: int,
        max_steps: int,
        images_per_step: int,
        log_every: int,
        chief: bool = True,
        class_names=None,
        postprocessor: PostProcessor | None = None,
    ):
        self.chief = chief
        self.start_step = start_step
        self.images_per_step = images_per_step
        self.log_every = log_every
        self.class_names = class_names
        self.postprocessor = postprocessor
        self._last_time = None
        self._said_over_limit = False
        if not chief:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.metrics_path = os.path.join(output_dir, METRICS_FILE)
        truncate_metrics(self.metrics_path, start_step)
        self.writer = tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard"))
        self.progress = Progress(start_step, max_steps, every_steps=log_every)

    def step_done(self, step: int, results: dict) -> dict:
        """Reports optimizer step `step` (1-based, as counted after it); returns the scalars logged."""
        now = time.perf_counter()
        images_per_s = self.images_per_step / (now - self._last_time) if self._last_time else 0.0
        self._last_time = now
        scalars = {k: float(v) for k, v in results.items()}
        scalars["images_per_s"] = images_per_s
        if not self.chief:
            return scalars
        record = {"step": step, **{k: scalars[k] for k in STEP_KEYS}, "images_per_s": images_per_s}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if step % self.log_every == 0:
            with self.writer.as_default():
                for name, value in scalars.items():
                    is_loss_term = name.startswith("loss_") and name != "loss_scale"
                    write_scalar(name if is_loss_term else f"train/{name}", value, step)
        self.progress.update(step, scalars, images_per_s)
        return scalars

    def render_predictions(self, step: int, model, images: np.ndarray, count: int = 2) -> None:
        """Draws the model's predictions on the first `count` training images into TensorBoard."""
        if not self.chief or self.postprocessor is None:
            return
        images = np.asarray(images[:count])
        outputs = model(images, training=False)
        size = images.shape[1:3]
        results = self.postprocessor(outputs, [size] * len(images), [size] * len(images))
        draw = {"instance": draw_instances, "panoptic": draw_panoptic, "semantic": draw_semantic}[
            self.postprocessor.task
        ]
        pixels = np.clip(images, 0, 255).astype(np.uint8)
        drawn = np.stack([draw(image, result, self.class_names) for image, result in zip(pixels, results, strict=True)])
        with self.writer.as_default():
            write_images("predictions", drawn, step)
        self.writer.flush()

    def targets_over_limit(self, num_targets, max_instances: int) -> None:
        """Says once per run that an image had more targets than `max_instances` (its largest were kept).

        num_targets: int arrays or tensors (B,), one per local replica: the targets before the limit; read
        only until the first is found."""
        if self._said_over_limit:
            return
        most = max(int(np.max(counts, initial=0)) for counts in num_targets)
        if most > max_instances:
            self._said_over_limit = True
            self.message(
                f"data: an image has {most} targets, more than data.max_instances={max_instances}; the largest "
                f"{max_instances} are kept (raise data.max_instances to train on all; said once per run)"
            )

    def message(self, text: str) -> None:
        """A line for the person watching (chief only), not mixed into the progress bar."""
        if self.chief:
            self.progress.clear()
            print(text, flush=True)

    def close(self) -> None:
        if self.chief:
            self.progress.clear()
            self.writer.flush()
            self.writer.close()

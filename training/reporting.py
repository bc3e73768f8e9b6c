"""What a run shows and leaves behind: a progress bar, TensorBoard, `metrics.jsonl` and rendered predictions.

- Progress bar (Keras `Progbar`, chief only): step, total loss and its final-set terms, lr, images/s, ETA.
- TensorBoard (`output_dir/tensorboard`), every `train.log_every` steps: every loss term (all prediction
  sets), the learning rate, the gradient norm, the loss scale, images/s; at each checkpoint a few
  predictions on training images, drawn by `inference.visualize`.
- `output_dir/metrics.jsonl`: one JSON line per step (step, losses of the final set, total, lr,
  grad_norm, images_per_s, applied); a resumed run first drops the lines after its checkpoint, so the
  file always describes one uninterrupted run (the quickstart plots the learning curve from it).
"""

from __future__ import annotations

import json
import os
import time

import keras
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
        if not chief:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.metrics_path = os.path.join(output_dir, METRICS_FILE)
        truncate_metrics(self.metrics_path, start_step)
        self.writer = tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard"))
        self.progbar = keras.utils.Progbar(
            max_steps - start_step,
            stateful_metrics=["step", "lr", "images/s", "loss", "ce", "mask", "dice"],
            unit_name="step",
        )

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
        self.progbar.update(
            step - self.start_step,
            values=[
                ("step", step),
                ("loss", scalars["loss_total"]),
                ("ce", scalars["loss_ce"]),
                ("mask", scalars["loss_mask"]),
                ("dice", scalars["loss_dice"]),
                ("lr", scalars["learning_rate"]),
                ("images/s", images_per_s),
            ],
        )
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

    def message(self, text: str) -> None:
        """A line for the person watching (chief only), not mixed into the progress bar."""
        if self.chief:
            print(f"\n{text}", flush=True)

    def close(self) -> None:
        if self.chief:
            self.writer.flush()
            self.writer.close()

"""Running a model on images: reading, the official test-time resize, batching, post-processing.

    predictor = Predictor(model, config, isthing=categories.isthing)
    results = predictor([read_image("a.jpg"), read_image("b.png")])   # one result per image

Test-time input as in the official model (detectron2 `ResizeShortestEdge(800, 1333)`, PIL bilinear):
the shorter side becomes `config.data.min_size_test` unless the longer side would pass
`max_size_test`. The model normalises and zero-pads to a multiple of 32 itself, and the official
model does not mask that padding, so an image's result depends on its padded size: a batch is split
into groups of one padded size (images padded bottom/right with `model.pixel_mean`, which equals
detectron2's zero padding after normalisation), and every image gets the result it gets alone.
A Keras model runs compiled once per padded shape (`CompiledModel`, `config.inference.compile`).
Results come back at each image's original size.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
from PIL import Image

from data.resize import shortest_edge_size
from inference.image_check import warn_if_truncated
from inference.postprocess import PostProcessor


def read_image(path: str) -> np.ndarray:
    """Any image file OpenCV reads -> (H, W, 3) uint8 RGB; EXIF orientation applied, gray / RGBA converted."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # honours EXIF orientation, drops alpha, expands gray
    if image is None:
        raise ValueError(f"cannot read image {path}; it is missing, empty or not an image format OpenCV knows")
    warn_if_truncated(str(path))  # OpenCV fills a truncated JPEG with grey without an error
    return np.ascontiguousarray(image[..., ::-1])


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(height, width) after the test-time resize, as Python ints (`data.resize.shortest_edge_size`)."""
    new_height, new_width = shortest_edge_size(height, width, min_size, max_size).numpy()
    return int(new_height), int(new_width)


def resize_for_test(image: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> resized uint8 with PIL bilinear, as detectron2's `ResizeTransform`.

    PIL itself, the filter `data.resize` reproduces bit for bit in TensorFlow (for records and the
    exported graph): on a CPU it is as fast for small photos and 2-3 times faster for 12-megapixel ones."""
    height, width = resized_shape(*image.shape[:2], min_size, max_size)
    if (height, width) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def pad_batch(images: list[np.ndarray], pad_value) -> np.ndarray:
    """List of (h_i, w_i, 3) -> (B, max h, max w, 3) float32, padded bottom/right with `pad_value` (RGB)."""
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    batch = np.empty((len(images), height, width, 3), np.float32)
    batch[...] = np.asarray(pad_value, np.float32)
    for i, image in enumerate(images):
        batch[i, : image.shape[0], : image.shape[1]] = image
    return batch


class CompiledModel:
    """A Keras model's inference call compiled once per input shape and kept (XLA on TensorFlow, `jax.jit`).

    The model pads its input to a multiple of 32 and the official model does not mask that padding,
    so padding further would change results; each padded shape therefore gets its own compiled
    function. `compile_seconds[shape]` holds the first call's time (trace + compile + run).

    Args:
        model: a built Keras `Mask2Former` (or anything with its call contract).
        mode: "xla" (TensorFlow `jit_compile=True`; `jax.jit` on JAX), "function" (one TensorFlow graph
            without XLA for every shape, the graph of the exported SavedModel), or "eager". On the
            torch backend every mode runs eagerly.

    Call: `images` (B, H, W, 3) float32 RGB 0..255 -> {"pred_logits" (B, Q, K+1), "pred_masks"
    (B, Q, Hp/4, Wp/4)} as NumPy arrays.
    """

    MODES = ("xla", "function", "eager")

    def __init__(self, model, mode: str = "xla"):
        if mode not in self.MODES:
            raise ValueError(f"compile mode {mode!r} is not one of {', '.join(self.MODES)}")
        self.model = model
        self.mode = mode
        self.compile_seconds: dict[tuple, float] = {}
        self._functions: dict[tuple, object] = {}
        self._any_shape = None  # mode "function" on TensorFlow: one graph for every shape

    def __call__(self, images, training=False) -> dict:
        images = np.asarray(images, np.float32)
        shape = images.shape
        function = self._functions.get(shape)
        first = function is None
        if first:
            function = self._functions[shape] = self._compile()
        start = time.perf_counter()
        outputs = {k: np.asarray(v) for k, v in function(images).items()}
        if first:
            self.compile_seconds[shape] = time.perf_counter() - start
        return outputs

    def _compile(self):
        import keras

        model, backend = self.model, keras.backend.backend()

        def predict(images):
            outputs = model(images, training=False)
            return {"pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"]}

        if self.mode == "eager" or backend == "torch" or not isinstance(model, keras.Model):
            if backend == "torch":
                import torch

                def no_grad(images):
                    with torch.no_grad():
                        return {k: v.cpu().numpy() for k, v in predict(images).items()}

                return no_grad
            return predict
        if backend == "tensorflow":
            import tensorflow as tf

            if self.mode == "xla":
                return tf.function(predict, jit_compile=True, autograph=False)
            if self._any_shape is None:
                # One graph for any batch, height and width: the graph the exported SavedModel runs
                # (inference/export.py). A graph traced at one fixed shape lets grappler's constant
                # folding reorder float arithmetic, ~1e-6 from this one, which flips mask pixels.
                spec = tf.TensorSpec([None, None, None, 3], tf.float32)
                self._any_shape = tf.function(predict, input_signature=[spec], autograph=False)
            return self._any_shape
        if backend == "jax":
            import jax

            def stateless(trainable, non_trainable, images):
                outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
                return {"pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"]}

            jitted = jax.jit(stateless)
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]
            return lambda images: jitted(trainable, non_trainable, images)
        return predict


def padded_shape(height: int, width: int, divisor: int = 32) -> tuple[int, int]:
    """The size the model pads an (height, width) input to: both rounded up to a multiple of `divisor`."""
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def groups_by_padded_shape(shapes: list[tuple[int, int]], divisor: int = 32) -> list[list[int]]:
    """Indices of `shapes` grouped by padded shape, in order of first appearance."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (height, width) in enumerate(shapes):
        groups.setdefault(padded_shape(height, width, divisor), []).append(index)
    return list(groups.values())


def compiled(model, config):
    """A Keras model wrapped in `CompiledModel` with `config.inference.compile`; other callables unchanged."""
    import keras

    if not isinstance(model, keras.Model):
        return model
    return CompiledModel(model, compile_mode(config.inference.compile))


def compile_mode(mode: str) -> str:
    """ "auto" -> "function" on a TensorFlow CPU (XLA measured slower there, bench/NOTES.md), else "xla"."""
    if mode != "auto":
        return mode
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return "xla" if tf.config.list_physical_devices("GPU") else "function"
    return "xla"


class Predictor:
    """Model + test-time resize + post-processing of one task.

    Args:
        model: a Keras `Mask2Former` (run through `CompiledModel`), or any callable
            `model(images, training=False)` -> {"pred_logits", "pred_masks"} (the model contract).
        config: `Mask2FormerConfig` (test sizes, pixel mean, inference section).
        isthing: bool per contiguous class (from `Categories.isthing`); None = all things.
        task: overrides `config.inference.task`.
    """

    def __init__(self, model, config, isthing=None, task: str | None = None):
        self.model = compiled(model, config)
        self.min_size = config.data.min_size_test
        self.max_size = config.data.max_size_test
        self.pixel_mean = config.model.pixel_mean
        self.size_divisibility = config.model.size_divisibility
        self.postprocess = PostProcessor.from_config(config, isthing=isthing, task=task)

    def __call__(self, images: list[np.ndarray]) -> list:
        """Original (H, W, 3) uint8 RGB images (one batch) -> their results at the original sizes."""
        resized = [resize_for_test(image, self.min_size, self.max_size) for image in images]
        results = [None] * len(images)
        for group in groups_by_padded_shape([image.shape[:2] for image in resized], self.size_divisibility):
            outputs = self.model(pad_batch([resized[i] for i in group], self.pixel_mean), training=False)
            group_results = self.postprocess(
                outputs, [resized[i].shape[:2] for i in group], [images[i].shape[:2] for i in group]
            )
            for index, result in zip(group, group_results, strict=True):
                results[index] = result
        return results

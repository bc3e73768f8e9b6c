"""Exporting a trained Mask2Former: a TF SavedModel for TF Serving, LiteRT and ONNX.

    export_saved_model(model, "export/m2f", ExportSettings.from_config(config, categories))
    export_litert(model, "m2f.tflite", size=(800, 1216), precision="float16")
    export_onnx(model, "m2f.onnx", size=(800, 1216))   # size None converts, but onnxruntime then fails

SavedModel signatures (loadable with `tf.saved_model.load` alone, no project code):

- `serving_default`: `images` string (B,), encoded JPEG / PNG of any sizes -> the task's result at
  each image's size, padded to the largest image of the batch (`image_sizes` (B, 2) says where each
  ends). Every image is decoded, resized and run alone (`tf.map_fn`), so batching changes nothing.
- `predict_images`: `images` uint8 (B, H, W, 3) RGB -> the same outputs.
- `logits`: `images` float32 (B, H, W, 3) RGB 0..255 -> `pred_logits` (B, Q, K+1) and `pred_masks`
  (B, Q, Hp/4, Wp/4), the Keras model's outputs.

Pre-processing equals `test.py`'s: JPEG decoded with libjpeg's accurate integer DCT (as OpenCV),
then detectron2's `ResizeShortestEdge` with PIL's bilinear filter, reproduced bit for bit by
`data.resize` (the TFRecord evaluation's code). EXIF orientation is not applied: send upright pixels.

Outputs of the result signatures, per task (N = instances kept, padded with class -1 and score 0):
- instance: `masks` uint8 (B, N, H, W), `classes` int32 (B, N) contiguous, `category_ids` int32,
  `class_names` string, `scores` float32 (B, N), `boxes` float32 (B, N, 4) [x0, y0, x1, y1] (x1, y1
  exclusive), `num_instances` int32 (B,); highest score first, as `inference.postprocess`.
- panoptic: `segment_ids` int32 (B, H, W) (0 = none, segments 1..n), and per segment
  `segment_classes`, `segment_category_ids`, `segment_class_names`, `segment_isthing`,
  `segment_scores` (B, Q), `num_segments` (B,).
- semantic: `labels` int32 (B, H, W) contiguous classes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from data.resize import resize_for_test
from inference.postprocess import (
    crop_and_resize,
    mask_boxes,
    mask_quality,
    panoptic_candidates,
    panoptic_segments,
    resize_bilinear,
    semantic_inference,
    top_k_pairs,
)


@dataclasses.dataclass
class ExportSettings:
    """What the result signatures need besides the network: test sizes, task, thresholds, classes."""

    task: str = "instance"
    min_size_test: int = 800
    max_size_test: int = 1333
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    instances_per_image: int = 100
    isthing: tuple = ()  # bool per contiguous class; empty = all things
    category_ids: tuple = ()  # dataset id per contiguous class; empty = 0..K-1
    class_names: tuple = ()  # name per contiguous class; empty = "class k"

    @classmethod
    def from_config(cls, config, categories=None, task: str | None = None) -> ExportSettings:
        """From `config.data` / `config.inference` and a `data.categories.Categories` (or None)."""
        return cls(
            task=task or config.inference.task,
            min_size_test=config.data.min_size_test,
            max_size_test=config.data.max_size_test,
            object_mask_threshold=config.inference.object_mask_threshold,
            overlap_threshold=config.inference.overlap_threshold,
            instances_per_image=config.inference.instances_per_image,
            isthing=tuple(bool(v) for v in categories.isthing) if categories is not None else (),
            category_ids=tuple(int(v) for v in categories.ids) if categories is not None else (),
            class_names=tuple(categories.names) if categories is not None else (),
        )


# ---------------------------------------------------------------------------------------- decoding
def decode_image(data):
    """Encoded JPEG / PNG / BMP / GIF bytes -> (H, W, 3) uint8 RGB, JPEG pixels as OpenCV decodes them."""
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False),
    )


def decoded_size(data):
    """(2,) int32 height and width of an encoded image (JPEG header only; others are decoded)."""
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.extract_jpeg_shape(data)[:2],
        lambda: tf.shape(decode_image(data))[:2],
    )


# ------------------------------------------------------ post-processing of one image, in the graph
# inference/postprocess.py's rules (keras.ops, traced here on TensorFlow), laid out as fixed-size outputs.
def instance_outputs(class_logits, masks, instances_per_image: int, thing_classes=None):
    """postprocess.instance_inference: (Q, K+1), (Q, H, W) mask logits -> dict padded to k instances."""
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    k = min(instances_per_image, num_queries * num_classes)
    top_scores, labels, queries = top_k_pairs(class_logits, k)
    if thing_classes is not None:  # a panoptic model's instances keep thing classes only
        chosen = tf.gather(tf.constant(thing_classes), labels)
        labels, queries, top_scores = (tf.boolean_mask(v, chosen) for v in (labels, queries, top_scores))
    logits = tf.gather(masks, queries)  # [N, H, W]
    scores = top_scores * mask_quality(logits)
    order = tf.argsort(-scores, stable=True)
    binary_masks = tf.gather(logits > 0, order)
    count = tf.shape(order)[0]
    pad = k - count
    return {
        "masks": tf.pad(tf.cast(binary_masks, tf.uint8), [[0, pad], [0, 0], [0, 0]]),
        "classes": tf.pad(tf.gather(labels, order), [[0, pad]], constant_values=-1),
        "scores": tf.pad(tf.gather(scores, order), [[0, pad]]),
        "boxes": tf.pad(mask_boxes(binary_masks), [[0, pad], [0, 0]]),
        "num_instances": count,
    }


def panoptic_outputs(class_logits, masks, isthing, object_mask_threshold: float, overlap_threshold: float):
    """postprocess.panoptic_inference: (Q, K+1), (Q, H, W) mask logits -> segment map + Q segment slots."""
    num_queries = class_logits.shape[0]
    scores, labels, kept = panoptic_candidates(class_logits, object_mask_threshold)
    keep = tf.where(kept)[:, 0]  # query order
    scores, labels = tf.gather(scores, keep), tf.gather(labels, keep)
    n = tf.shape(keep)[0]
    probs_k = tf.sigmoid(tf.gather(masks, keep))  # [n, H, W]
    # an extra last candidate below every real one owns the pixels only when no query is kept
    candidates = tf.concat([scores[:, None, None] * probs_k, -tf.ones_like(masks[:1])], axis=0)
    owner = tf.argmax(candidates, axis=0, output_type=tf.int32)  # [H, W] in 0..n
    probs_ext = tf.concat([probs_k, tf.zeros_like(masks[:1])], axis=0)
    owner_prob = tf.gather(tf.transpose(probs_ext, (1, 2, 0)), owner[..., None], batch_dims=2)[..., 0]
    inside = owner_prob >= 0.5  # the owner's own mask covers the pixel
    original_area = tf.reduce_sum(tf.cast(probs_k >= 0.5, tf.int32), axis=(1, 2))
    argmax_area = tf.math.unsorted_segment_sum(tf.ones_like(owner), owner, n + 1)[:n]
    segment_area = tf.math.unsorted_segment_sum(tf.cast(inside, tf.int32), owner, n + 1)[:n]
    thing = tf.gather(tf.constant(isthing), labels)
    segment_of_query, new = panoptic_segments(
        labels, thing, argmax_area, original_area, segment_area, overlap_threshold
    )
    segment_ids = tf.where(inside, tf.gather(tf.concat([segment_of_query, [0]], 0), owner), 0)
    count = tf.reduce_sum(tf.cast(new, tf.int32))
    pad = num_queries - count
    return {
        "segment_ids": segment_ids,
        "segment_classes": tf.pad(tf.boolean_mask(labels, new), [[0, pad]], constant_values=-1),
        "segment_isthing": tf.pad(tf.boolean_mask(thing, new), [[0, pad]]),
        "segment_scores": tf.pad(tf.boolean_mask(scores, new), [[0, pad]]),
        "num_segments": count,
    }


def semantic_outputs(class_logits, padded_masks, image_size, original_size):
    """postprocess.semantic_inference on the padded input, then crop and resize: -> (H0, W0) int32."""
    probs = crop_and_resize(semantic_inference(class_logits, padded_masks), image_size, original_size)
    return {"labels": tf.argmax(probs, axis=0, output_type=tf.int32)}


# ------------------------------------------------------------------------------ the serving module
class ServingFunctions:
    """The model plus `settings` as TensorFlow functions of one image and of a batch.

    `predict_one(image, canvas)`: (H, W, 3) uint8 original image -> the task's result at (H, W),
    padded bottom/right to `canvas` (2,). `predict_encoded` / `predict_images`: a batch, each image
    alone (`tf.map_fn`, one at a time), padded to the batch's largest image.
    """

    def __init__(self, model, settings: ExportSettings):
        self.model = model
        self.settings = settings
        num_classes = model.num_classes
        isthing = settings.isthing or (True,) * num_classes
        if len(isthing) != num_classes:
            raise ValueError(
                f"the categories list {len(isthing)} classes but the model predicts {num_classes}; "
                "pass the categories.json of the dataset the model was trained on"
            )
        self.isthing = np.asarray(isthing, bool)
        self.category_ids = np.asarray(settings.category_ids or range(num_classes), np.int32)
        self.class_names = np.asarray(settings.class_names or [f"class {k}" for k in range(num_classes)], object)
        # one traced graph of the per-image work, shared by both result signatures
        self._predict_one = tf.function(
            self.predict_one,
            input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int32)],
            autograph=False,
        )

    def output_signature(self) -> dict:
        """tf.TensorSpec per output of `predict_one` (without the batch axis)."""
        q, k = self.model.num_queries, self.model.num_classes
        if self.settings.task == "instance":
            n = min(self.settings.instances_per_image, q * k)
            return {
                "masks": tf.TensorSpec([n, None, None], tf.uint8),
                "classes": tf.TensorSpec([n], tf.int32),
                "scores": tf.TensorSpec([n], tf.float32),
                "boxes": tf.TensorSpec([n, 4], tf.float32),
                "num_instances": tf.TensorSpec([], tf.int32),
            }
        if self.settings.task == "panoptic":
            return {
                "segment_ids": tf.TensorSpec([None, None], tf.int32),
                "segment_classes": tf.TensorSpec([q], tf.int32),
                "segment_isthing": tf.TensorSpec([q], tf.bool),
                "segment_scores": tf.TensorSpec([q], tf.float32),
                "num_segments": tf.TensorSpec([], tf.int32),
            }
        return {"labels": tf.TensorSpec([None, None], tf.int32)}

    def predict_one(self, image, canvas):
        s = self.settings
        resized = resize_for_test(image, s.min_size_test, s.max_size_test)
        outputs = self.model(tf.cast(resized, tf.float32)[None], training=False)
        class_logits, mask_logits = outputs["pred_logits"][0], outputs["pred_masks"][0]
        padded_size = 4 * tf.shape(mask_logits)[1:]
        image_size, original_size = tf.shape(resized)[:2], tf.shape(image)[:2]
        if s.task == "semantic":
            padded = resize_bilinear(mask_logits, padded_size)
            result = semantic_outputs(class_logits, padded, image_size, original_size)
        else:
            masks = crop_and_resize(resize_bilinear(mask_logits, padded_size), image_size, original_size)
            if s.task == "panoptic":
                result = panoptic_outputs(
                    class_logits, masks, self.isthing, s.object_mask_threshold, s.overlap_threshold
                )
            else:
                things_only = None if self.isthing.all() else self.isthing
                result = instance_outputs(class_logits, masks, s.instances_per_image, things_only)
        pad = [[0, canvas[0] - original_size[0]], [0, canvas[1] - original_size[1]]]
        for key in ("masks", "segment_ids", "labels"):
            if key in result:
                extra = [[0, 0]] * (len(result[key].shape) - 2)
                result[key] = tf.pad(result[key], extra + pad)
        return result

    def _batch(self, images, sizes, load):
        """`load(element)` -> (H, W, 3) uint8, for each element of `images`; sizes (B, 2)."""
        canvas = tf.reduce_max(sizes, axis=0)
        results = tf.map_fn(
            lambda element: self._predict_one(load(element), canvas),
            images,
            fn_output_signature=self.output_signature(),
            parallel_iterations=1,
        )
        results["image_sizes"] = sizes
        for prefix, key in (("", "classes"), ("segment_", "segment_classes")):
            if key in results:  # dataset ids and names beside the contiguous classes; -1 / "" for padding
                index = tf.maximum(results[key], 0)
                results[prefix + "category_ids"] = tf.where(
                    results[key] >= 0, tf.gather(tf.constant(self.category_ids), index), -1
                )
                results[prefix + "class_names"] = tf.where(
                    results[key] >= 0, tf.gather(tf.constant(self.class_names.astype(str)), index), ""
                )
        return results

    def predict_encoded(self, images):
        """(B,) string encoded images -> batch results."""
        sizes = tf.map_fn(decoded_size, images, fn_output_signature=tf.TensorSpec([2], tf.int32))
        return self._batch(images, sizes, decode_image)

    def predict_images(self, images):
        """(B, H, W, 3) uint8 -> batch results."""
        sizes = tf.tile(tf.shape(images)[1:3][None], [tf.shape(images)[0], 1])
        return self._batch(images, sizes, lambda image: image)

    def logits(self, images):
        """(B, H, W, 3) float32 RGB 0..255 -> the model's final `pred_logits` and `pred_masks`."""
        return self.logits_of(self.model)(images)

    @staticmethod
    def logits_of(model):
        def logits(images):
            outputs = model(images, training=False)
            return {"pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"]}

        return logits


def _logits_spec(size):
    """float32 (B, H, W, 3) input spec; `size` None = any height and width."""
    height, width = size if size is not None else (None, None)
    return tf.TensorSpec([None, height, width, 3], tf.float32, name="images")


def export_saved_model(model, path: str, settings: ExportSettings, size=None) -> None:
    """SavedModel with `serving_default` (encoded images), `predict_images` (uint8) and `logits`."""
    import keras

    functions = ServingFunctions(model, settings)
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serving_default(images):
        return functions.predict_encoded(images)

    def predict_images(images):
        return functions.predict_images(images)

    def logits(images):
        return functions.logits(images)

    archive.add_endpoint("serving_default", serving_default, [tf.TensorSpec([None], tf.string, name="images")])
    archive.add_endpoint(
        "predict_images", predict_images, [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
    )
    archive.add_endpoint("logits", logits, [_logits_spec(size)])
    archive.write_out(path, verbose=False)


def _logits_function(model, size):
    """tf.function (B, H, W, 3) float32 -> (pred_logits, pred_masks), traced at `size` (None: any)."""
    spec = _logits_spec(size)

    @tf.function(input_signature=[spec], autograph=False)
    def logits(images):
        outputs = model(images, training=False)
        return {"pred_logits": outputs["pred_logits"], "pred_masks": outputs["pred_masks"]}

    return logits


def export_litert(model, path: str, size, precision: str = "float32") -> None:
    """LiteRT flatbuffer of the `logits` function at a fixed (H, W), TFLite built-in ops only.

    precision "float16" stores the weights as float16 (dequantized to float32 when the interpreter
    loads them); the arithmetic stays float32. As Keras' own LiteRT export, the function goes through a
    SavedModel, which freezes the weights into constants.
    """
    import tempfile

    import keras

    if size is None:
        raise ValueError("LiteRT needs a fixed input size; pass --size HxW (e.g. 800x1216)")
    if precision not in ("float32", "float16"):
        raise ValueError(f"precision must be float32 or float16, got {precision!r}")
    with tempfile.TemporaryDirectory() as folder:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", ServingFunctions.logits_of(model), [_logits_spec(size)])
        archive.write_out(folder, verbose=False)
        litert_from_saved_model(folder, path, precision)


def litert_from_saved_model(folder: str, path: str, precision: str = "float32") -> None:
    """Converts a SavedModel's `serving_default` (a fixed-size logits function) to LiteRT, built-ins only."""
    converter = tf.lite.TFLiteConverter.from_saved_model(folder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    with open(path, "wb") as f:
        f.write(converter.convert())


def export_onnx(model, path: str, size, opset: int = 17) -> None:
    """ONNX (tf2onnx, opset `opset`) of the `logits` function at a fixed (H, W).

    `size` None (free height and width) converts, but onnxruntime then fails in the decoder's
    cross-attention (tf2onnx drops the batch axis of a Reshape); tools/export.py refuses it.
    """
    onnx_from_function(_logits_function(model, size), path, size, opset)


def onnx_from_function(function, path: str, size=None, opset: int = 17) -> None:
    """tf2onnx conversion of a tf.function `images` (B, H, W, 3) float32 -> {pred_logits, pred_masks}."""
    import tf2onnx
    from keras.src.export.tf2onnx_lib import patch_tf2onnx

    patch_tf2onnx()  # Keras' numpy-2 fixes for tf2onnx, as `model.export(format="onnx")` applies them
    tf2onnx.convert.from_function(function, input_signature=[_logits_spec(size)], opset=opset, output_path=path)

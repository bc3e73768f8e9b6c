"""Serialized `tf.train.Example` -> tensors (the Model Garden "Decoder" half of the data path).

    decoder = Decoder(categories, source="objects")   # or "panoptic", "semantic"
    example = decoder(serialized)                     # works eagerly and inside Dataset.map

Every source gives `image` uint8 (H, W, 3), `source_id` string, `classes` int32 (N,) contiguous class
indices (`categories.index_of`), `is_crowd` bool (N,), plus either
  - "objects":  `masks` uint8 (N, H, W) 0/1 and `boxes` float32 (N, 4) [ymin, xmin, ymax, xmax] pixels;
  - "panoptic": `segment_map` int32 (H, W), segment n's pixels hold n + 1 (0 = void);
  - "semantic": `label_map` int32 (H, W), class c's pixels hold c + 1 (0 = unlabelled or an id not in
    the category list = ignore), with N = K, one segment per class (the parser keeps those present).
Keeping segment maps as one id map lets the parser resample a single channel and build the
binary masks only at the output resolution.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from data import tfrecord_format as fmt
from data.categories import Categories

SOURCES = ("objects", "panoptic", "semantic")


class Decoder:
    """Decodes records written by convert_coco_to_tfrecord.py for one target source."""

    def __init__(self, categories: Categories, source: str = "objects"):
        if source not in SOURCES:
            raise ValueError(f"unknown target source {source!r}; choose one of {SOURCES}")
        self.categories = categories
        self.source = source
        # Dense dataset-id -> contiguous-index table; -1 marks an id outside the category list.
        lookup = np.full(max(categories.ids) + 2, -1, np.int32)
        lookup[list(categories.ids)] = np.arange(categories.num_classes, dtype=np.int32)
        self._lookup = tf.constant(lookup)

    def contiguous(self, category_ids: tf.Tensor) -> tf.Tensor:
        """Dataset category ids -> contiguous indices (-1 for unknown ids)."""
        ids = tf.cast(category_ids, tf.int32)
        inside = (ids >= 0) & (ids < tf.shape(self._lookup)[0])
        return tf.where(inside, tf.gather(self._lookup, tf.clip_by_value(ids, 0, tf.shape(self._lookup)[0] - 1)), -1)

    def _features(self) -> dict:
        varlen = tf.io.VarLenFeature
        features = {
            fmt.IMAGE_ENCODED: tf.io.FixedLenFeature((), tf.string),
            fmt.IMAGE_SOURCE_ID: tf.io.FixedLenFeature((), tf.string, default_value=""),
        }
        if self.source == "objects":
            features.update(
                {
                    fmt.OBJECT_LABEL: varlen(tf.int64),
                    fmt.OBJECT_IS_CROWD: varlen(tf.int64),
                    fmt.OBJECT_MASK: varlen(tf.string),
                    **{
                        key: varlen(tf.float32)
                        for key in (fmt.OBJECT_YMIN, fmt.OBJECT_XMIN, fmt.OBJECT_YMAX, fmt.OBJECT_XMAX)
                    },
                }
            )
        elif self.source == "panoptic":
            features.update(
                {
                    fmt.PANOPTIC_INSTANCE_MASK: tf.io.FixedLenFeature((), tf.string, default_value=""),
                    fmt.SEGMENT_LABEL: varlen(tf.int64),
                    fmt.SEGMENT_IS_CROWD: varlen(tf.int64),
                }
            )
        else:
            features[fmt.SEMANTIC_ENCODED] = tf.io.FixedLenFeature((), tf.string, default_value="")
        return features

    def __call__(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_single_example(serialized, self._features())
        dense = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v for k, v in parsed.items()}
        image = tf.io.decode_image(dense[fmt.IMAGE_ENCODED], channels=3, expand_animations=False)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        out = {"image": image, "source_id": dense[fmt.IMAGE_SOURCE_ID]}

        if self.source == "objects":
            labels = dense[fmt.OBJECT_LABEL]
            pngs = dense[fmt.OBJECT_MASK]
            tf.debugging.assert_equal(
                tf.size(pngs),
                tf.size(labels),
                message="a record has objects without masks; convert it with --include_masks",
            )
            masks = tf.cond(
                tf.size(pngs) > 0,
                lambda: tf.map_fn(
                    lambda png: tf.io.decode_png(png, channels=1)[..., 0],
                    pngs,
                    fn_output_signature=tf.TensorSpec([None, None], tf.uint8),
                ),
                lambda: tf.zeros([0, height, width], tf.uint8),
            )
            out["masks"] = tf.reshape(masks, [-1, height, width])  # [N, H, W] also for N = 0
            size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
            normalised = [dense[k] for k in (fmt.OBJECT_YMIN, fmt.OBJECT_XMIN, fmt.OBJECT_YMAX, fmt.OBJECT_XMAX)]
            out["boxes"] = tf.reshape(tf.stack(normalised, axis=-1), [-1, 4]) * size
            out["classes"] = self.contiguous(labels)
            out["is_crowd"] = dense[fmt.OBJECT_IS_CROWD] > 0
        elif self.source == "panoptic":
            png = dense[fmt.PANOPTIC_INSTANCE_MASK]
            tf.debugging.assert_greater(
                tf.strings.length(png),
                0,
                message="a record has no panoptic masks; convert with --include_panoptic_masks",
            )
            out["segment_map"] = tf.cast(tf.io.decode_png(png, channels=1, dtype=tf.uint16)[..., 0], tf.int32)
            out["classes"] = self.contiguous(dense[fmt.SEGMENT_LABEL])
            out["is_crowd"] = dense[fmt.SEGMENT_IS_CROWD] > 0
        else:
            png = dense[fmt.SEMANTIC_ENCODED]
            tf.debugging.assert_greater(tf.strings.length(png), 0, message="a record has no semantic label PNG")
            label = decode_label_png(png)
            out["label_map"] = self.contiguous(label) + 1
            num_classes = self.categories.num_classes
            out["classes"] = tf.range(num_classes, dtype=tf.int32)
            out["is_crowd"] = tf.zeros([num_classes], tf.bool)
        return out


def decode_label_png(png: tf.Tensor) -> tf.Tensor:
    """int32 (H, W) from an 8- or 16-bit single-channel PNG, values unscaled (byte 24 is the bit depth)."""
    bit_depth = tf.io.decode_raw(tf.strings.substr(png, 24, 1), tf.uint8)[0]
    return tf.cond(
        bit_depth == 16,
        lambda: tf.cast(tf.io.decode_png(png, channels=1, dtype=tf.uint16)[..., 0], tf.int32),
        lambda: tf.cast(tf.io.decode_png(png, channels=1)[..., 0], tf.int32),
    )


def segment_masks(segment_map: tf.Tensor, num_segments: tf.Tensor) -> tf.Tensor:
    """uint8 (N, H, W) binary masks from a segment (or label) map whose segment n holds n + 1."""
    ids = tf.range(1, num_segments + 1, dtype=segment_map.dtype)
    return tf.cast(segment_map[None] == ids[:, None, None], tf.uint8)

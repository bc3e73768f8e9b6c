"""Decoded example -> model inputs and targets (the Model Garden "Parser" half of the data path).

Training (`TrainParser`), one of two official recipes:
  - "lsj" (COCO): horizontal flip, resize so the image fits `image_size` scaled by U(0.1, 2.0), random
    crop / pad to exactly `image_size` (image padded with 128, labels with nothing = ignore);
  - "ade20k" (ADE20K and Cityscapes): horizontal flip, shortest edge chosen from {0.5, 0.6, ..., 2.0} x
    the crop's longer side (max side 4 x that; the official configs' 512 / 640 for ADE20K, 1024 for
    Cityscapes' 512 x 1024 crops), random crop to `image_size`, SSD-style photometric jitter, padding
    as above.
Crowd regions are left out of the targets. Output: the static training contract

    image float32 (H, W, 3) 0..255, masks uint8 (M, H, W), labels int32 (M,), valid bool (M,)

with M = `max_instances`, and `num_targets` int32 () the image's targets before that limit. Instance
targets whose mask is empty after the crop are dropped (as the official instance mapper does);
panoptic targets keep them (as the official panoptic mapper does); semantic targets are the classes
present after the crop. An image with more than M targets keeps the M largest (the training loop
says so once per run, from `num_targets`).

Evaluation (`EvalParser`): resize the shortest edge to `min_size` (longest at most `max_size`) with
exactly the pixels of detectron2's test-time resize (PIL bilinear on uint8, `data.resize`; the
same as `inference.predictor.resize_for_test`), pad bottom/right to a multiple of 32 (or to a fixed
size for batching) with the pixel mean, which the model's normalisation turns into the official zero
padding; keeps `valid_size` and `original_size`.

Geometry is computed once per sample and applied to everything: the image is resampled directly into
the crop window (`ScaleAndTranslate`, exactly `tf.image.resize(antialias=True)` followed by the crop,
but only the kept pixels are computed); masks and segment maps take nearest-neighbour rows and columns
of the same window. Randomness is stateless, from a per-sample seed, so a seeded pipeline repeats.
"""

from __future__ import annotations

import tensorflow as tf

from data.resize import pil_resize_bilinear, shortest_edge_size


# ----------------------------------------------------------------- geometry
def _resample_image(image: tf.Tensor, scaled_size: tf.Tensor, offset: tf.Tensor, crop_size: tf.Tensor) -> tf.Tensor:
    """float32 (crop_h, crop_w, 3): `image` resized to `scaled_size` (antialiased bilinear), cropped at `offset`."""
    in_size = tf.cast(tf.shape(image)[:2], tf.float32)
    return tf.raw_ops.ScaleAndTranslate(
        images=tf.cast(image, tf.float32)[None],
        size=crop_size,
        scale=tf.cast(scaled_size, tf.float32) / in_size,
        translation=-tf.cast(offset, tf.float32),
        kernel_type="triangle",
        antialias=True,
    )[0]


def _nearest_indices(in_size: tf.Tensor, scaled_size: tf.Tensor, offset: tf.Tensor, crop_size: tf.Tensor) -> tf.Tensor:
    """Source index of each output pixel along one axis (half-pixel centres, as nearest resize)."""
    out = tf.cast(offset + tf.range(crop_size), tf.float32) + 0.5
    index = tf.cast(tf.floor(out * tf.cast(in_size, tf.float32) / tf.cast(scaled_size, tf.float32)), tf.int32)
    return tf.clip_by_value(index, 0, in_size - 1)


def _resample_labels(labels: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, axis: int) -> tf.Tensor:
    """Nearest-neighbour resample of label planes whose (H, W) axes start at `axis`."""
    return tf.gather(tf.gather(labels, rows, axis=axis), cols, axis=axis + 1)


def _pad_to(tensor: tf.Tensor, size: tuple[int, int], value, axis: int) -> tf.Tensor:
    """Pads the (H, W) axes starting at `axis` bottom/right to `size` with `value`."""
    rank = len(tensor.shape)
    paddings = [[0, 0]] * rank
    paddings[axis] = [0, size[0] - tf.shape(tensor)[axis]]
    paddings[axis + 1] = [0, size[1] - tf.shape(tensor)[axis + 1]]
    return tf.pad(tensor, paddings, constant_values=tf.cast(value, tensor.dtype))


def _random_uniform(seed: tf.Tensor, minval=0.0, maxval=1.0) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed, minval=minval, maxval=maxval, dtype=tf.float32)


# ------------------------------------------------------------ photometric
def _ssd_color_jitter(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """detectron2's ColorAugSSDTransform on float 0..255 RGB: brightness +-32, contrast and saturation
    x U(0.5, 1.5), hue +-18/180, each with probability 0.5; contrast before or after the HSV steps."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 9))
    apply = [_random_uniform(s) < 0.5 for s in seeds[:4]]

    def brightness(x):
        delta = _random_uniform(seeds[4], -32.0, 32.0)
        return tf.where(apply[0], tf.clip_by_value(x + delta, 0.0, 255.0), x)

    def contrast(x):
        alpha = _random_uniform(seeds[5], 0.5, 1.5)
        return tf.where(apply[1], tf.clip_by_value(x * alpha, 0.0, 255.0), x)

    def saturation_and_hue(x):
        hsv = tf.image.rgb_to_hsv(x / 255.0)
        alpha = _random_uniform(seeds[6], 0.5, 1.5)
        hue_shift = tf.floor(_random_uniform(seeds[7], -18.0, 19.0)) / 180.0
        s = tf.where(apply[2], tf.clip_by_value(hsv[..., 1] * alpha, 0.0, 1.0), hsv[..., 1])
        h = tf.where(apply[3], tf.math.floormod(hsv[..., 0] + hue_shift, 1.0), hsv[..., 0])
        return tf.image.hsv_to_rgb(tf.stack([h, s, hsv[..., 2]], axis=-1)) * 255.0

    image = brightness(image)
    contrast_first = _random_uniform(seeds[8]) < 0.5
    image = tf.cond(contrast_first, lambda: saturation_and_hue(contrast(image)), lambda: image)
    return tf.cond(contrast_first, lambda: image, lambda: contrast(saturation_and_hue(image)))


# ------------------------------------------------------------ target slots
def pad_instances(masks: tf.Tensor, labels: tf.Tensor, max_instances: int, pad: bool = True):
    """(N, H, W) masks and (N,) labels -> (M, H, W), (M,), valid (M,). Over M: keeps the M largest.

    pad=False keeps the min(N, M) real targets: (n, H, W), (n,), valid (n,) all true."""
    count = tf.shape(labels)[0]

    def keep_largest():
        areas = tf.reduce_sum(tf.cast(masks, tf.int32), axis=[1, 2])
        keep = tf.sort(tf.math.top_k(areas, k=max_instances).indices)
        return tf.gather(masks, keep), tf.gather(labels, keep)

    masks, labels = tf.cond(count > max_instances, keep_largest, lambda: (masks, labels))
    count = tf.minimum(count, max_instances)
    if not pad:
        return masks, labels, tf.ones([count], tf.bool)
    padding = max_instances - count
    masks = tf.pad(masks, [[0, padding], [0, 0], [0, 0]])
    labels = tf.pad(labels, [[0, padding]])
    valid = tf.range(max_instances) < count
    return masks, labels, valid


# -------------------------------------------------------------------- train
class TrainParser:
    """Decoded example + per-sample seed (2,) -> the static training contract (see module docstring).

    `fixed_slots=False` keeps only the real targets (M = their number, at most `max_instances`), for
    the pipeline to pad each batch to its own bucket (see data/pipeline.py): no image carries
    `max_instances` full-size masks.
    `with_extras` adds `ignore_mask` uint8 (H, W) (padding, crowd and unlabelled pixels), `boxes`
    float32 (M, 4) [ymin, xmin, ymax, xmax] in output pixels (instance source only; zeros otherwise)
    and `source_id`, for inspection (`test_dataset.py`) and tests.
    """

    def __init__(
        self,
        *,
        image_size: tuple[int, int],
        max_instances: int,
        augmentation: str = "lsj",
        scale_range: tuple[float, float] = (0.1, 2.0),
        horizontal_flip: bool = True,
        image_pad_value: float = 128.0,
        with_extras: bool = False,
        fixed_slots: bool = True,
    ):
        if augmentation not in ("lsj", "ade20k"):
            raise ValueError(f"augmentation must be 'lsj' or 'ade20k', got {augmentation!r}")
        self.image_size = tuple(int(s) for s in image_size)
        self.max_instances = int(max_instances)
        self.augmentation = augmentation
        self.scale_range = tuple(float(s) for s in scale_range)
        self.horizontal_flip = horizontal_flip
        self.image_pad_value = float(image_pad_value)
        self.with_extras = with_extras
        self.fixed_slots = fixed_slots

    def _sample_window(self, in_size: tf.Tensor, seeds: list[tf.Tensor]):
        """(scaled_size, offset, crop_size) int32 (2,) each, for the configured recipe."""
        out_size = tf.constant(self.image_size, tf.float32)
        size = tf.cast(in_size, tf.float32)
        if self.augmentation == "lsj":  # detectron2 ResizeScale + FixedSizeCrop
            scale = _random_uniform(seeds[1], *self.scale_range)
            factor = tf.reduce_min(out_size * scale / size)
            scaled = tf.maximum(tf.cast(tf.round(size * factor), tf.int32), 1)
            crop = tf.minimum(scaled, self.image_size)
            # FixedSizeCrop draws one uniform number for both axes.
            offset = tf.cast(tf.round(tf.cast(scaled - crop, tf.float32) * _random_uniform(seeds[2])), tf.int32)
        else:  # detectron2 ResizeShortestEdge(choice) + RandomCrop("absolute")
            base = max(self.image_size)  # official MIN_SIZE_TRAIN [int(x * 0.1 * base)], MAX_SIZE_TRAIN 4 x base
            choices = tf.constant([int(x * 0.1 * base) for x in range(5, 21)], tf.float32)
            short = tf.gather(choices, tf.random.stateless_uniform([], seeds[1], 0, len(choices), dtype=tf.int32))
            factor = short / tf.reduce_min(size)
            factor = tf.minimum(factor, 4.0 * base / tf.reduce_max(size))
            scaled = tf.maximum(tf.cast(tf.floor(size * factor + 0.5), tf.int32), 1)
            crop = tf.minimum(scaled, self.image_size)
            offset = tf.random.stateless_uniform([2], seeds[2], 0, tf.int32.max, dtype=tf.int32) % (scaled - crop + 1)
        return scaled, offset, crop

    def __call__(self, example: dict[str, tf.Tensor], seed: tf.Tensor) -> dict[str, tf.Tensor]:
        seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4))
        image = example["image"]
        in_size = tf.shape(image)[:2]
        flip = self.horizontal_flip & (_random_uniform(seeds[0]) < 0.5)
        scaled, offset, crop = self._sample_window(in_size, seeds)
        rows = _nearest_indices(in_size[0], scaled[0], offset[0], crop[0])
        cols = _nearest_indices(in_size[1], scaled[1], offset[1], crop[1])
        cols = tf.where(flip, in_size[1] - 1 - cols, cols)  # flipping = reading the columns mirrored

        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
        image = _resample_image(image, scaled, offset, crop)
        if self.augmentation == "ade20k":
            image = _ssd_color_jitter(image, seeds[3])
        image = _pad_to(image, self.image_size, self.image_pad_value, axis=0)

        classes, is_crowd = example["classes"], example["is_crowd"]
        keep = (~is_crowd) & (classes >= 0)
        if "masks" in example:  # instance objects: drop crowd and the ones the crop emptied
            object_masks = _resample_labels(example["masks"], rows, cols, axis=1)  # [N, h, w]
            keep &= tf.reduce_any(object_masks > 0, axis=[1, 2])
            target_masks, labels = tf.boolean_mask(object_masks, keep), tf.boolean_mask(classes, keep)
            crowd = lambda: tf.reduce_max(tf.boolean_mask(object_masks, is_crowd), axis=0)  # noqa: E731 (zeros if none)
        else:
            semantic = "label_map" in example
            segment_map = _resample_labels(example["label_map" if semantic else "segment_map"], rows, cols, axis=0)
            segment_ids = tf.range(1, tf.size(classes) + 1)
            if semantic:  # the classes present after the crop
                present = tf.unique(tf.reshape(segment_map, [-1])).y
                ids = tf.sort(tf.boolean_mask(present, present > 0))
                crowd = lambda: segment_map == 0  # noqa: E731 (unlabelled)
            else:  # panoptic: every non-crowd segment, even one the crop left empty (official mapper)
                ids = tf.boolean_mask(segment_ids, keep)
                crowd_ids = tf.boolean_mask(segment_ids, is_crowd)
                crowd = lambda: tf.reduce_any(segment_map[None] == crowd_ids[:, None, None], axis=0)  # noqa: E731
            target_masks = tf.cast(segment_map[None] == ids[:, None, None], tf.uint8)  # [N, h, w]
            labels = tf.gather(classes, ids - 1)

        target_masks = _pad_to(target_masks, self.image_size, 0, axis=1)
        num_targets = tf.shape(labels)[0]
        masks, labels, valid = pad_instances(target_masks, labels, self.max_instances, pad=self.fixed_slots)
        slots = self.max_instances if self.fixed_slots else None
        out = {
            "image": tf.ensure_shape(image, [*self.image_size, 3]),
            "masks": tf.ensure_shape(masks, [slots, *self.image_size]),
            "labels": tf.ensure_shape(tf.cast(labels, tf.int32), [slots]),
            "valid": tf.ensure_shape(valid, [slots]),
            "num_targets": num_targets,
        }
        if self.with_extras:
            out["ignore_mask"] = _pad_to(tf.cast(crowd(), tf.uint8), self.image_size, 1, axis=0)
            out["boxes"] = self._boxes(example, keep, flip, in_size, scaled, offset, crop)
            out["source_id"] = example["source_id"]
        return out

    def _boxes(self, example, keep, flip, in_size, scaled, offset, crop) -> tf.Tensor:
        """The record's boxes through the same flip / scale / crop, for the kept targets: (M, 4)."""
        if "boxes" not in example:
            return tf.zeros([self.max_instances if self.fixed_slots else 0, 4], tf.float32)
        b = example["boxes"]  # [N, 4] ymin, xmin, ymax, xmax in input pixels
        width = tf.cast(in_size[1], tf.float32)
        xmin = tf.where(flip, width - b[:, 3], b[:, 1])
        xmax = tf.where(flip, width - b[:, 1], b[:, 3])
        factor = tf.cast(scaled, tf.float32) / tf.cast(in_size, tf.float32)
        shift, limit = tf.cast(offset, tf.float32), tf.cast(crop, tf.float32)
        ys = tf.clip_by_value(tf.stack([b[:, 0], b[:, 2]], -1) * factor[0] - shift[0], 0.0, limit[0])
        xs = tf.clip_by_value(tf.stack([xmin, xmax], -1) * factor[1] - shift[1], 0.0, limit[1])
        boxes = tf.boolean_mask(tf.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], axis=-1), keep)
        boxes = boxes[: self.max_instances]
        if not self.fixed_slots:
            return boxes
        return tf.pad(boxes, [[0, self.max_instances - tf.shape(boxes)[0]], [0, 0]])


# --------------------------------------------------------------------- eval
class EvalParser:
    """Decoded example -> `image` float32 (Hp, Wp, 3), `valid_size` int32 (2,) (the resized image inside
    the padding), `original_size` int32 (2,), `source_id`. Hp, Wp: the resized size rounded up to a
    multiple of `size_divisibility`, or `fixed_size` (for batching) when given."""

    def __init__(
        self,
        *,
        min_size: int,
        max_size: int,
        pixel_mean: tuple[float, float, float],
        size_divisibility: int = 32,
        fixed_size: tuple[int, int] | None = None,
    ):
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.pixel_mean = tf.constant(pixel_mean, tf.float32)
        self.size_divisibility = int(size_divisibility)
        self.fixed_size = tuple(fixed_size) if fixed_size else None

    def __call__(self, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = example["image"]
        original = tf.shape(image)[:2]
        resized = shortest_edge_size(original[0], original[1], self.min_size, self.max_size)
        image = tf.cast(pil_resize_bilinear(image, resized), tf.float32)
        if self.fixed_size:
            padded = self.fixed_size
        else:
            d = self.size_divisibility
            padded = (resized + d - 1) // d * d
        image = _pad_to(image - self.pixel_mean, padded, 0.0, axis=0) + self.pixel_mean
        if self.fixed_size:
            image = tf.ensure_shape(image, [*self.fixed_size, 3])
        return {"image": image, "valid_size": resized, "original_size": original, "source_id": example["source_id"]}

"""detectron2's test-time resize, bit for bit, in TensorFlow: one definition for records, test.py and export.

`ResizeShortestEdge(min_size, max_size)`: the shorter side becomes `min_size` unless the longer side
would pass `max_size`; the pixels are PIL's `Image.resize(..., Image.BILINEAR)` on uint8 (detectron2's
`ResizeTransform`): an antialiased triangle filter with 22-bit fixed-point weights (the support widens
when downscaling), two passes, each rounded to uint8. Every op is a TensorFlow op, so `tf.data` and an
exported SavedModel trace it.
"""

from __future__ import annotations

import tensorflow as tf

PIL_PRECISION_BITS = 22  # Pillow's Resample.c for 8-bit images: 32 - 8 - 2


def shortest_edge_size(height, width, min_size: int, max_size: int) -> tf.Tensor:
    """detectron2 `ResizeShortestEdge.get_output_shape` in float64: int32 (2,) (new height, new width)."""
    height, width = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    scale = min_size / tf.minimum(height, width)
    new_height = tf.where(height < width, tf.constant(min_size, tf.float64), scale * height)
    new_width = tf.where(height < width, scale * width, tf.constant(min_size, tf.float64))
    longest = tf.maximum(new_height, new_width)
    shrink = tf.where(longest > max_size, max_size / longest, 1.0)
    new_height = tf.where(longest > max_size, new_height * shrink, new_height)
    new_width = tf.where(longest > max_size, new_width * shrink, new_width)
    return tf.cast(tf.floor(tf.stack([new_height, new_width]) + 0.5), tf.int32)


def pil_bilinear_taps(in_size, out_size):
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for its bilinear filter along one axis.

    Returns the source index int32 (out, T) and the fixed-point weight int32 (out, T) of each output
    pixel (weights sum to ~2**22), T = 2 ceil(support) + 1.
    """
    in_f, out_f = tf.cast(in_size, tf.float64), tf.cast(out_size, tf.float64)
    scale = in_f / out_f
    filter_scale = tf.maximum(scale, 1.0)
    support = filter_scale  # the bilinear (triangle) filter has support 1, widened when shrinking
    num_taps = 2 * tf.cast(tf.math.ceil(support), tf.int32) + 1
    center = (tf.range(out_f, dtype=tf.float64) + 0.5) * scale  # [out]
    first = tf.maximum(tf.floor(center - support + 0.5), 0.0)
    count = tf.minimum(tf.floor(center + support + 0.5), in_f) - first
    tap = tf.range(tf.cast(num_taps, tf.float64), dtype=tf.float64)  # [T]
    distance = (first[:, None] + tap[None, :] - center[:, None] + 0.5) * (1.0 / filter_scale)  # [out, T]
    weight = tf.where(tap[None, :] < count[:, None], tf.maximum(1.0 - tf.abs(distance), 0.0), 0.0)
    # the normaliser summed tap after tap, as Pillow does (the order decides the last bit)
    total = tf.foldl(lambda acc, column: acc + column, tf.transpose(weight), initializer=tf.zeros_like(center))
    weight = tf.where(total[:, None] != 0.0, weight / total[:, None], weight)
    fixed = tf.cast(tf.floor(0.5 + weight * 2.0**PIL_PRECISION_BITS), tf.int32)  # never negative for bilinear
    source = tf.cast(first, tf.int32)[:, None] + tf.range(num_taps)[None, :]
    return tf.minimum(source, tf.cast(in_size, tf.int32) - 1), fixed


def _resample_axis(image, out_size, axis: int):
    """One Pillow pass (`ResampleHorizontal_8bpc` / `ResampleVertical_8bpc`) on int32 (H, W, C) 0..255.

    Exact integer arithmetic, one tap at a time (memory of one output plane, not of all taps).
    """
    index, weights = pil_bilinear_taps(tf.shape(image)[axis], out_size)
    weight_shape = [-1, 1, 1] if axis == 0 else [-1, 1]  # broadcast over (W, C) or (C,)

    def add_tap(tap, total):
        pixels = tf.gather(image, index[:, tap], axis=axis)
        return tap + 1, total + pixels * tf.reshape(weights[:, tap], weight_shape)

    shape = tf.tensor_scatter_nd_update(tf.shape(image), [[axis]], [out_size])
    total = tf.fill(shape, tf.constant(1 << (PIL_PRECISION_BITS - 1), tf.int32))  # rounds half up
    _, total = tf.while_loop(lambda tap, _: tap < tf.shape(index)[1], add_tap, (tf.constant(0), total))
    return tf.clip_by_value(tf.bitwise.right_shift(total, PIL_PRECISION_BITS), 0, 255)


def pil_resize_bilinear(image, size):
    """uint8 (H, W, C) -> uint8 (size[0], size[1], C) equal to `PIL.Image.resize((w, h), Image.BILINEAR)`.

    The pass order changes the last bit; Pillow 13 (measured on thousands of random size pairs,
    tests/test_export.py) runs the vertical pass first exactly when the height shrinks by more than
    twice as many pixels as the width does.
    """
    pixels = tf.cast(image, tf.int32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    vertical_first = (size[0] < height) & (height - size[0] > 2 * (width - size[1]))
    resized = tf.cond(
        vertical_first,
        lambda: _resample_axis(_resample_axis(pixels, size[0], axis=0), size[1], axis=1),
        lambda: _resample_axis(_resample_axis(pixels, size[1], axis=1), size[0], axis=0),
    )
    return tf.cast(resized, tf.uint8)


def resize_for_test(image, min_size: int, max_size: int):
    """uint8 (H, W, 3) -> the official test-time input, uint8 (h, w, 3)."""
    size = tf.shape(image)[:2]
    return pil_resize_bilinear(image, shortest_edge_size(size[0], size[1], min_size, max_size))

"""Point sampling of mask maps: `torch.nn.functional.grid_sample` semantics in TensorFlow.

Coordinates are (x, y) in [0, 1] over a map of H x W pixels whose centres lie at (k + 0.5) / size
(align_corners=False); reads outside the map are zero (zero padding). The arithmetic follows
torch's kernel step by step (`grid = 2c - 1`, `ix = ((grid + 1) * W - 1) / 2`, four weighted corners
summed nw, ne, sw, se), so sampled values and the points chosen by importance sampling agree with
the reference to float32 rounding.

Also here: the importance sampling of Mask2Former's mask losses (detectron2's
`get_uncertain_point_coords_with_randomness`), with its random draws passed in by the caller.
"""

from __future__ import annotations

import tensorflow as tf


def _corners(coords: tf.Tensor, height: int, width: int, canvas: tuple[int, int] | None):
    """Flat pixel indices (..., P, 4) and bilinear weights (..., P, 4) of the nw, ne, sw, se corners.

    `canvas` = (Hc, Wc) >= (H, W) places the map at the top-left of a larger zero canvas and reads the
    coordinates relative to the canvas (equal to zero-padding the map bottom/right first).
    """
    canvas_h, canvas_w = canvas if canvas is not None else (height, width)
    grid = 2.0 * coords - 1.0
    ix = ((grid[..., 0] + 1.0) * canvas_w - 1.0) / 2.0
    iy = ((grid[..., 1] + 1.0) * canvas_h - 1.0) / 2.0
    x0 = tf.floor(ix)
    y0 = tf.floor(iy)
    x1 = x0 + 1.0
    y1 = y0 + 1.0
    corner_x = tf.stack([x0, x1, x0, x1], axis=-1)
    corner_y = tf.stack([y0, y0, y1, y1], axis=-1)
    weights = tf.stack([(x1 - ix) * (y1 - iy), (ix - x0) * (y1 - iy), (x1 - ix) * (iy - y0), (ix - x0) * (iy - y0)], -1)
    inside = (corner_x >= 0) & (corner_x <= width - 1) & (corner_y >= 0) & (corner_y <= height - 1)
    weights = tf.where(inside, weights, tf.zeros_like(weights))
    cx = tf.cast(tf.clip_by_value(corner_x, 0, width - 1), tf.int32)
    cy = tf.cast(tf.clip_by_value(corner_y, 0, height - 1), tf.int32)
    return cy * width + cx, weights


def _interpolate(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Sums the four weighted corners in torch's order: (..., P, 4) -> (..., P)."""
    values = tf.cast(values, tf.float32) * weights
    return ((values[..., 0] + values[..., 1]) + values[..., 2]) + values[..., 3]


def _gather_pixels(maps: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """Reads maps (B, N, H, W) at flat indices (B, K) into N * H * W -> float32 (B, K).

    uint8 / bool masks are read as 32-bit words (TF has no GPU gather for 8-bit types, and a float copy
    of all target masks would cost 4x their memory), then the wanted byte is shifted out.
    """
    batch = maps.shape[0]
    flat = tf.reshape(maps, [batch, -1])
    if flat.shape[1] >= 2**31:
        raise ValueError(f"{flat.shape[1]} mask pixels per image exceed int32 indexing; lower data.max_instances")
    if maps.dtype not in (tf.uint8, tf.bool):
        return tf.cast(tf.gather(flat, index, batch_dims=1), tf.float32)
    flat = tf.cast(flat, tf.uint8)
    flat = tf.pad(flat, [[0, 0], [0, -flat.shape[1] % 4]])
    words = tf.bitcast(tf.reshape(flat, [batch, -1, 4]), tf.int32)  # (B, ceil(L / 4))
    word = tf.gather(words, index // 4, batch_dims=1)
    little_endian = tf.bitcast(tf.constant([1, 0, 0, 0], tf.uint8), tf.int32) == 1
    byte = tf.where(little_endian, index % 4, 3 - index % 4)
    return tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(word, 8 * byte), 0xFF), tf.float32)


def sample_shared_points(maps: tf.Tensor, coords: tf.Tensor, canvas: tuple[int, int] | None = None) -> tf.Tensor:
    """Samples every map of an image at the same points.

    Args:
        maps: (B, N, H, W) float, or uint8 / bool masks.
        coords: (B, P, 2) float32 (x, y) in [0, 1].
        canvas: optional (Hc, Wc) zero canvas the maps sit in (see `_corners`).
    Returns:
        (B, N, P) float32.
    """
    batch, num_maps, height, width = maps.shape
    index, weights = _corners(coords, height, width, canvas)  # (B, P, 4)
    index = index[:, None] + tf.range(num_maps)[None, :, None, None] * (height * width)  # (B, N, P, 4)
    values = _gather_pixels(maps, tf.reshape(index, [batch, -1]))
    return _interpolate(tf.reshape(values, tf.shape(index)), weights[:, None])


def sample_points_per_row(
    maps: tf.Tensor, rows: tf.Tensor, coords: tf.Tensor, canvas: tuple[int, int] | None = None
) -> tf.Tensor:
    """Samples map `rows[b, r]` of image b at its own points `coords[b, r]`.

    Args:
        maps: (B, N, H, W) float, or uint8 / bool masks.
        rows: (B, R) int32 indices into N (only the pixels read are touched: no gathered copies of maps).
        coords: (B, R, P, 2) float32 (x, y) in [0, 1].
        canvas: optional (Hc, Wc) zero canvas the maps sit in.
    Returns:
        (B, R, P) float32.
    """
    batch, _, height, width = maps.shape
    index, weights = _corners(coords, height, width, canvas)  # (B, R, P, 4)
    index = index + rows[:, :, None, None] * (height * width)
    values = _gather_pixels(maps, tf.reshape(index, [batch, -1]))
    return _interpolate(tf.reshape(values, tf.shape(index)), weights)


def importance_sample_points(
    logits: tf.Tensor,
    rows: tf.Tensor,
    oversampled: tf.Tensor,
    random_draw: tf.Tensor,
    num_points: int,
    num_uncertain: int,
    random_points: str = "fresh",
) -> tf.Tensor:
    """Mask2Former's training points: the most uncertain of the oversampled points, plus random ones.

    Uncertainty is -|logit| read at each oversampled point (bilinear, as the loss reads them); the
    `num_uncertain` most uncertain points are kept. The other `num_points - num_uncertain` come from
    `random_draw`:
      - "fresh" (detectron2's `get_uncertain_point_coords_with_randomness`, used by the official
        Mask2Former and by transformers): `random_draw` (B, R, n_random, 2) are new uniform coordinates.
      - "oversampled": `random_draw` (B, R, k*P - num_uncertain) are uniform keys, one per oversampled
        point not kept (in increasing uncertainty); the n_random with the largest keys are used, a uniform
        random subset of the remaining oversampled points.

    Args:
        logits: (B, N, h, w) predicted mask logits (read without gradient).
        rows: (B, R) int32, the map of each row.
        oversampled: (B, R, k*P, 2) uniform coordinates.
        random_draw: see above.
        num_points: P, points per row.
        num_uncertain: int(importance_sample_ratio * P).
        random_points: "fresh" or "oversampled".
    Returns:
        (B, R, P, 2) float32 coordinates, no gradient.
    """
    num_random = num_points - num_uncertain
    uncertainty = -tf.abs(sample_points_per_row(tf.stop_gradient(logits), rows, oversampled))  # (B, R, k*P)
    if random_points == "fresh":
        _, chosen = tf.math.top_k(uncertainty, k=num_uncertain)
        extra = random_draw
    elif random_points == "oversampled":
        _, order = tf.math.top_k(uncertainty, k=uncertainty.shape[-1])  # most uncertain first
        chosen = order[..., :num_uncertain]
        _, pick = tf.math.top_k(random_draw, k=num_random)
        extra = tf.gather(oversampled, tf.gather(order[..., num_uncertain:], pick, batch_dims=2), batch_dims=2)
    else:
        raise ValueError(f"random_points must be 'fresh' or 'oversampled', got {random_points!r}")
    uncertain = tf.gather(oversampled, chosen, batch_dims=2)
    return tf.stop_gradient(tf.concat([uncertain, extra], axis=2))

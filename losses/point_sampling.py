"""Point sampling of mask maps: `torch.nn.functional.grid_sample` semantics in TensorFlow.

Coordinates are (x, y) in [0, 1] over a map of H x W pixels whose centres lie at (k + 0.5) / size
(align_corners=False); reads outside the map are zero (zero padding). The arithmetic follows
torch's kernel step by step (`grid = 2c - 1`, `ix = ((grid + 1) * W - 1) / 2`, four weighted corners
summed nw, ne, sw, se), so sampled values and the points chosen by importance sampling agree with
the reference to float32 rounding.

Maps are read in one of two layouts, built once and read many times:
  - `pixel_major`: one row of all N map values per pixel, (B, H*W, N); every map of an image read at
    the same points (matching costs) is then a gather of whole rows (no per-map index arithmetic);
  - `map_major`: each row of points reads its own map (the losses of matched pairs, importance sampling).
    Float maps become a corner table, (B, N*(H+2)*(W+2), 4): cell (y, x) holds the pixels (y, x),
    (y, x+1), (y+1, x), (y+1, x+1) of the map zero-padded by one pixel on top and left and two on the
    bottom and right, so a point is one gather of its cell (not four single-pixel gathers), and corners
    outside the map read zero (torch skips them: the same sums). 8-bit maps (the target masks, 4x larger
    than the predictions and read at 4x fewer points) stay flattened one after another, (B, N*H*W), and
    are read pixel by pixel (a table of them costs more to build than it saves).
Corner indices and weights are computed once per point, not per map and corner.
8-bit masks stay 8-bit: they are read as 32-bit words (TF has no GPU gather for 8-bit types, and a
float copy of all target masks would cost 4x their memory).

Also here: the importance sampling of Mask2Former's mask losses (detectron2's
`get_uncertain_point_coords_with_randomness`), with its random draws passed in by the caller.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


def dim(x: tf.Tensor, axis: int) -> int | tf.Tensor:
    """x's size along `axis`: the int where the shape knows it, else a scalar tensor (e.g. the target
    slots of a training step traced for any bucket)."""
    size = x.shape[axis]
    return size if size is not None else tf.shape(x)[axis]


class Layout(NamedTuple):
    """Maps ready for point reads (see the module docstring).

    data: `pixel_major` (B, H*W, N) float32, or int32 words (B, H*W, ceil(N/4)) for 8-bit maps;
        `map_major` (B, N*(H+2)*(W+2), 4) float32 corner table, or int32 words (B, ceil(N*H*W/4)) for 8-bit maps.
    num_maps: N, an int or (where the shape leaves it open) a scalar tensor. size: (H, W).
    canvas: (Hc, Wc) >= (H, W), the zero canvas the coordinates refer to.
    bytes: True for 8-bit maps.
    maps: float `map_major` only, the maps (B, N*H*W) the table was built from (without their gradient):
        gradients of reads go to them directly, not through the table (its gradient is 4 strided copies
        of the whole maps and a segment sum of 4-wide cells, several times the reads' own cost).
    """

    data: tf.Tensor
    num_maps: int | tf.Tensor
    size: tuple[int, int]
    canvas: tuple[int, int]
    bytes: bool
    maps: tf.Tensor | None = None


def _prepare(maps: tf.Tensor, canvas: tuple[int, int] | None):
    size = tuple(maps.shape[2:])
    is_bytes = maps.dtype in (tf.uint8, tf.bool)
    maps = tf.cast(maps, tf.uint8) if is_bytes else tf.cast(maps, tf.float32)
    return maps, size, tuple(canvas) if canvas is not None else size, is_bytes


def pixel_major(maps: tf.Tensor, canvas: tuple[int, int] | None = None) -> Layout:
    """Layout for reading all maps of an image at shared points. maps: (B, N, H, W) float or 8-bit."""
    maps, size, canvas, is_bytes = _prepare(maps, canvas)
    batch, num_maps, pixels = maps.shape[0], dim(maps, 1), size[0] * size[1]
    rows = tf.transpose(tf.reshape(maps, [batch, num_maps, pixels]), [0, 2, 1])  # [B, N, HW] -> [B, HW, N]
    if is_bytes:
        rows = tf.pad(rows, [[0, 0], [0, 0], [0, -num_maps % 4]])
        rows = tf.bitcast(tf.reshape(rows, [batch, pixels, -1, 4]), tf.int32)  # (B, HW, ceil(N / 4))
    return Layout(rows, num_maps, size, canvas, is_bytes)


def map_major(maps: tf.Tensor, canvas: tuple[int, int] | None = None) -> Layout:
    """Layout for reading map `rows[b, r]` at its own points. maps: (B, N, H, W) float or 8-bit."""
    maps, size, canvas, is_bytes = _prepare(maps, canvas)
    batch, num_maps = maps.shape[0], dim(maps, 1)
    height, width = size
    too_many = f"masks of {height}x{width} pixels exceed int32 indexing; lower data.max_instances"
    if isinstance(num_maps, int) and num_maps * (height + 2) * (width + 2) >= 2**31:
        raise ValueError(f"{num_maps} {too_many}")
    if is_bytes:
        flat = tf.reshape(maps, [batch, -1])
        if not isinstance(num_maps, int):  # checked when the step runs
            tf.debugging.assert_less(tf.shape(flat, tf.int64)[1], tf.constant(2**31, tf.int64), message=too_many)
        flat = tf.pad(flat, [[0, 0], [0, -dim(flat, 1) % 4]])
        return Layout(tf.bitcast(tf.reshape(flat, [batch, -1, 4]), tf.int32), num_maps, size, canvas, True)
    padded = tf.pad(tf.stop_gradient(maps), [[0, 0], [0, 0], [1, 2], [1, 2]])
    cells = tf.stack(
        [padded[:, :, :-1, :-1], padded[:, :, :-1, 1:], padded[:, :, 1:, :-1], padded[:, :, 1:, 1:]], axis=-1
    )  # (B, N, H+2, W+2, 4): nw, ne, sw, se
    return Layout(tf.reshape(cells, [batch, -1, 4]), num_maps, size, canvas, False, tf.reshape(maps, [batch, -1]))


def _pixel_coords(coords: tf.Tensor, canvas: tuple[int, int]):
    """grid_sample's pixel coordinates ix, iy (align_corners=False) of (x, y) points in [0, 1] on `canvas`,
    and their corners x0 = floor(ix), y0, x1 = x0 + 1, y1, each (..., P) float32."""
    canvas_h, canvas_w = canvas
    grid = 2.0 * coords - 1.0
    ix = ((grid[..., 0] + 1.0) * canvas_w - 1.0) / 2.0
    iy = ((grid[..., 1] + 1.0) * canvas_h - 1.0) / 2.0
    x0 = tf.floor(ix)
    y0 = tf.floor(iy)
    return ix, iy, x0, y0, x0 + 1.0, y0 + 1.0


def _corners(coords: tf.Tensor, size: tuple[int, int], canvas: tuple[int, int]):
    """Flat pixel indices and bilinear weights of the nw, ne, sw, se corners, each (..., P).

    Corners outside the map (off the canvas, or on the canvas beyond the map) get weight 0 and a
    clamped index; products and sums follow torch's kernel.
    """
    height, width = size
    ix, iy, x0, y0, x1, y1 = _pixel_coords(coords, canvas)
    in_x0, in_x1 = (x0 >= 0) & (x0 <= width - 1), (x1 >= 0) & (x1 <= width - 1)
    in_y0, in_y1 = (y0 >= 0) & (y0 <= height - 1), (y1 >= 0) & (y1 <= height - 1)
    weights = (
        tf.where(in_x0 & in_y0, (x1 - ix) * (y1 - iy), 0.0),
        tf.where(in_x1 & in_y0, (ix - x0) * (y1 - iy), 0.0),
        tf.where(in_x0 & in_y1, (x1 - ix) * (iy - y0), 0.0),
        tf.where(in_x1 & in_y1, (ix - x0) * (iy - y0), 0.0),
    )
    cx0, cx1 = (tf.cast(tf.clip_by_value(x, 0.0, width - 1.0), tf.int32) for x in (x0, x1))
    row0, row1 = (tf.cast(tf.clip_by_value(y, 0.0, height - 1.0), tf.int32) * width for y in (y0, y1))
    return (row0 + cx0, row0 + cx1, row1 + cx0, row1 + cx1), weights


def _weighted_sum(values, weights):
    """sum of value * weight over the four corners in torch's order ((nw + ne) + sw) + se."""
    terms = [v * w for v, w in zip(values, weights, strict=True)]
    return ((terms[0] + terms[1]) + terms[2]) + terms[3]


def read_shared(layout: Layout, coords: tf.Tensor) -> tf.Tensor:
    """Every map of a `pixel_major` layout at the image's points: coords (B, P, 2) -> (B, P, N) float32."""
    indices, weights = _corners(coords, layout.size, layout.canvas)  # (B, P) each
    values = []
    for index in indices:
        rows = tf.gather(layout.data, index, batch_dims=1)  # (B, P, N) or words (B, P, ceil(N / 4))
        if layout.bytes:
            rows = tf.reshape(tf.bitcast(rows, tf.uint8), [rows.shape[0], rows.shape[1], -1])
            rows = tf.cast(rows[:, :, : layout.num_maps], tf.float32)
        values.append(rows)
    return _weighted_sum(values, [w[:, :, None] for w in weights])


def _cells(coords: tf.Tensor, size: tuple[int, int], canvas: tuple[int, int]):
    """Corner-table cell index (..., P) and bilinear weights of the nw, ne, sw, se corners (see `map_major`).

    Weights follow torch's kernel; corners outside the map read zero from the table."""
    height, width = size
    ix, iy, x0, y0, x1, y1 = _pixel_coords(coords, canvas)
    weights = ((x1 - ix) * (y1 - iy), (ix - x0) * (y1 - iy), (x1 - ix) * (iy - y0), (ix - x0) * (iy - y0))
    cell_x = tf.cast(tf.clip_by_value(x0, -1.0, float(width)), tf.int32) + 1
    cell_y = tf.cast(tf.clip_by_value(y0, -1.0, float(height)), tf.int32) + 1
    return cell_y * (width + 2) + cell_x, weights


def _read_flat(layout: Layout, index: tf.Tensor) -> tf.Tensor:
    """Values of an 8-bit `map_major` layout at flat pixel indices (B, ...) -> float32 (B, ...)."""
    word = tf.gather(layout.data, index // 4, batch_dims=1)
    little_endian = tf.bitcast(tf.constant([1, 0, 0, 0], tf.uint8), tf.int32) == 1
    byte = tf.where(little_endian, index % 4, 3 - index % 4)
    return tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(word, 8 * byte), 0xFF), tf.float32)


def read_rows(layout: Layout, rows: tf.Tensor, coords: tf.Tensor) -> tf.Tensor:
    """Map `rows[b, r]` of a `map_major` layout at its own points: (B, R), (B, R, P, 2) -> (B, R, P)."""
    height, width = layout.size
    if layout.bytes:
        indices, weights = _corners(coords, layout.size, layout.canvas)  # (B, R, P) each
        first = rows[:, :, None] * (height * width)
        return _weighted_sum([_read_flat(layout, first + index) for index in indices], weights)
    cell, weights = _cells(coords, layout.size, layout.canvas)  # (B, R, P) each
    corners = tf.gather(layout.data, rows[:, :, None] * ((height + 2) * (width + 2)) + cell, batch_dims=1)
    values = _weighted_sum(tf.unstack(corners, axis=-1), weights)  # corners (B, R, P, 4)
    if layout.maps is None:
        return values
    return _with_map_gradient(values, layout, rows, tf.stop_gradient(coords))


def _with_map_gradient(values: tf.Tensor, layout: Layout, rows: tf.Tensor, coords: tf.Tensor) -> tf.Tensor:
    """`values` (read from the table) with the gradient of the same bilinear read of `layout.maps`."""
    height, width = layout.size

    @tf.custom_gradient
    def read(maps):
        def grad(upstream):  # d value / d pixel: the corner's weight, summed over the points reading it
            indices, weights = _corners(coords, layout.size, layout.canvas)  # (B, R, P) each
            batch, size = maps.shape[0], tf.shape(maps)[1]
            first = rows[:, :, None] * (height * width) + (tf.range(batch) * size)[:, None, None]
            parts = [
                tf.math.unsorted_segment_sum(upstream * weight, first + index, batch * size)
                for index, weight in zip(indices, weights, strict=True)
            ]
            return tf.reshape(tf.add_n(parts), tf.shape(maps))

        return tf.identity(values), grad

    return read(layout.maps)


def sample_shared_points(maps: tf.Tensor, coords: tf.Tensor, canvas: tuple[int, int] | None = None) -> tf.Tensor:
    """Samples every map of an image at the same points.

    Args:
        maps: (B, N, H, W) float, or uint8 / bool masks.
        coords: (B, P, 2) float32 (x, y) in [0, 1].
        canvas: optional (Hc, Wc) >= (H, W): the maps sit at the top-left of a zero canvas of that size
            and the coordinates refer to the canvas (equal to zero-padding the maps bottom/right first).
    Returns:
        (B, N, P) float32.
    """
    return tf.transpose(read_shared(pixel_major(maps, canvas), coords), [0, 2, 1])


def sample_points_per_row(
    maps: tf.Tensor, rows: tf.Tensor, coords: tf.Tensor, canvas: tuple[int, int] | None = None
) -> tf.Tensor:
    """Samples map `rows[b, r]` of image b at its own points `coords[b, r]`.

    Args:
        maps: (B, N, H, W) float, or uint8 / bool masks.
        rows: (B, R) int32 indices into N (only the pixels read are touched: no gathered copies of maps).
        coords: (B, R, P, 2) float32 (x, y) in [0, 1].
        canvas: optional (Hc, Wc) zero canvas the maps sit in (see `sample_shared_points`).
    Returns:
        (B, R, P) float32.
    """
    return read_rows(map_major(maps, canvas), rows, coords)


def importance_sample_points(
    logits: tf.Tensor | Layout,
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
        logits: (B, N, h, w) predicted mask logits (read without gradient), or their `map_major` layout.
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
    layout = logits if isinstance(logits, Layout) else map_major(logits)
    layout = layout._replace(data=tf.stop_gradient(layout.data), maps=None)
    uncertainty = -tf.abs(read_rows(layout, rows, oversampled))  # (B, R, k*P)
    if random_points == "fresh":
        _, chosen = tf.math.top_k(uncertainty, k=num_uncertain, sorted=False)  # the set, not its order
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

"""Point sampling of mask maps: `torch.nn.functional.grid_sample` semantics in keras.ops.

Coordinates are (x, y) in [0, 1] over a map of H x W pixels whose centres lie at (k + 0.5) / size
(align_corners=False); reads outside the map are zero (zero padding). The arithmetic follows
torch's kernel step by step (`grid = 2c - 1`, `ix = ((grid + 1) * W - 1) / 2`, four weighted corners
summed ((nw + ne) + sw) + se), so sampled values and the points chosen by importance sampling agree with
the reference to float32 rounding.

A map may sit at the top-left of a larger zero `canvas` (the target masks of a padded input image): the
coordinates then refer to the canvas. A read is four gathers of single pixels from the flattened maps
(corner indices and weights computed once per point, not per map); corners outside the map get weight 0.
The gradient of a read is the backends' own gather gradient (a scatter-add of weight x upstream).

Two reads: `sample_shared_points` reads every map of an image at the same points (matching costs), and
`sample_points_per_row` reads map `rows[b, r]` at its own points (the losses of matched pairs).
Also here: the importance sampling of Mask2Former's mask losses (detectron2's
`get_uncertain_point_coords_with_randomness`), with its random draws passed in by the caller.
"""

from __future__ import annotations

import keras
from keras import ops


def dim(x, axis: int):
    """x's size along `axis`: the int where the shape knows it, else a scalar tensor (e.g. the target
    slots of a TensorFlow training step traced for any bucket)."""
    size = x.shape[axis]
    return size if size is not None else ops.shape(x)[axis]


def _corners(coords, size: tuple[int, int], canvas: tuple[int, int]):
    """Flat pixel indices (`_index_dtype`) and bilinear weights of the nw, ne, sw, se corners, each (..., P).

    Corners outside the map (off the canvas, or on the canvas beyond the map) get weight 0 and a
    clamped index; products and sums follow torch's kernel.
    """
    height, width = size
    canvas_h, canvas_w = canvas
    grid = 2.0 * ops.cast(coords, "float32") - 1.0
    ix = ((grid[..., 0] + 1.0) * canvas_w - 1.0) / 2.0
    iy = ((grid[..., 1] + 1.0) * canvas_h - 1.0) / 2.0
    x0, y0 = ops.floor(ix), ops.floor(iy)
    x1, y1 = x0 + 1.0, y0 + 1.0
    in_x0, in_x1 = (x0 >= 0) & (x0 <= width - 1), (x1 >= 0) & (x1 <= width - 1)
    in_y0, in_y1 = (y0 >= 0) & (y0 <= height - 1), (y1 >= 0) & (y1 <= height - 1)
    zero = ops.zeros_like(ix)
    weights = (
        ops.where(in_x0 & in_y0, (x1 - ix) * (y1 - iy), zero),
        ops.where(in_x1 & in_y0, (ix - x0) * (y1 - iy), zero),
        ops.where(in_x0 & in_y1, (x1 - ix) * (iy - y0), zero),
        ops.where(in_x1 & in_y1, (ix - x0) * (iy - y0), zero),
    )
    cx0, cx1 = (ops.cast(ops.clip(x, 0.0, width - 1.0), _index_dtype()) for x in (x0, x1))
    row0, row1 = (ops.cast(ops.clip(y, 0.0, height - 1.0), _index_dtype()) * width for y in (y0, y1))
    return (row0 + cx0, row0 + cx1, row1 + cx0, row1 + cx1), weights


def _weighted_sum(values, weights):
    """sum of value * weight over the four corners in torch's order ((nw + ne) + sw) + se."""
    terms = [v * w for v, w in zip(values, weights, strict=True)]
    return ((terms[0] + terms[1]) + terms[2]) + terms[3]


def _index_dtype() -> str:
    """int64 on PyTorch (its gathers take int64: an int32 index array would be copied at every gather), else
    int32."""
    return "int64" if keras.backend.backend() == "torch" else "int32"


def _gatherable(maps):
    """Float maps as float32; 8-bit masks as float16 (0 and 1 exactly, half the memory of float32; every
    backend gathers it)."""
    dtype = "float16" if keras.backend.standardize_dtype(maps.dtype) in ("uint8", "bool") else "float32"
    return ops.cast(maps, dtype)


def sample_shared_points(maps, coords, canvas: tuple[int, int] | None = None):
    """Samples every map of an image at the same points.

    The maps are laid out pixel by pixel, (B*H*W, N), so that a corner is one gather of whole rows.

    Args:
        maps: (B, N, H, W) float, or uint8 / bool masks (no gradient); or a list of S such tensors, each
            read at its own points (the corner arithmetic is done once for all of them).
        coords: (B, P, 2) float32 (x, y) in [0, 1]; (S, B, P, 2) with a list of maps.
        canvas: optional (Hc, Wc) >= (H, W): the maps sit at the top-left of a zero canvas of that size
            and the coordinates refer to the canvas (equal to zero-padding the maps bottom/right first).
    Returns:
        (B, N, P) float32; a list of S of them with a list of maps.
    """
    if not isinstance(maps, (list, tuple)):
        return sample_shared_points([maps], coords[None], canvas)[0]
    batch, height, width = maps[0].shape[0], maps[0].shape[2], maps[0].shape[3]
    pixels = height * width
    indices, weights = _corners(coords, (height, width), canvas or (height, width))  # (S, B, P) each
    first = ops.arange(batch, dtype=_index_dtype())[:, None] * pixels
    per_set = list(zip(*(ops.unstack(first + index) for index in indices), strict=True))  # S x 4 x (B, P)
    weights = list(zip(*(ops.unstack(w[..., None]) for w in weights), strict=True))  # S x 4 x (B, P, 1)
    pixel_major = {}  # id(maps) -> (B*H*W, N): laid out once when the same maps are read at several points
    results = []
    for s, map_set in enumerate(maps):
        if id(map_set) not in pixel_major:
            rows = ops.transpose(ops.reshape(_gatherable(map_set), [batch, dim(map_set, 1), pixels]), [0, 2, 1])
            pixel_major[id(map_set)] = ops.reshape(rows, [batch * pixels, dim(map_set, 1)])
        rows = pixel_major[id(map_set)]
        values = [ops.cast(ops.take(rows, index, axis=0), "float32") for index in per_set[s]]  # (B, P, N)
        results.append(ops.transpose(_weighted_sum(values, weights[s]), [0, 2, 1]))
    return results


def sample_points_per_row(maps, rows, coords, canvas: tuple[int, int] | None = None):
    """Samples map `rows[b, r]` of image b at its own points `coords[b, r]`.

    Args:
        maps: (B, N, H, W) float, or uint8 / bool masks.
        rows: (B, R) int32 indices into N (only the pixels read are touched: no gathered copies of maps).
        coords: (B, R, P, 2) float32 (x, y) in [0, 1].
        canvas: optional (Hc, Wc) zero canvas the maps sit in (see `sample_shared_points`).
    Returns:
        (B, R, P) float32; differentiable with respect to float `maps`.
    """
    batch, num_maps, height, width = maps.shape[0], dim(maps, 1), maps.shape[2], maps.shape[3]
    pixels = height * width
    if isinstance(num_maps, int) and batch * num_maps * pixels >= 2**31 and _index_dtype() == "int32":
        raise ValueError(
            f"{batch * num_maps} masks of {height}x{width} pixels exceed int32 indexing; lower data.max_instances"
        )
    flat = ops.reshape(_gatherable(maps), [-1])  # (B*N*H*W,)
    indices, weights = _corners(coords, (height, width), canvas or (height, width))  # (B, R, P) each
    image = ops.arange(batch, dtype=_index_dtype())[:, None]
    first = ((image * num_maps + ops.cast(rows, _index_dtype())) * pixels)[:, :, None]  # (B, R, 1)
    values = [ops.cast(ops.take(flat, first + index), "float32") for index in indices]
    return _weighted_sum(values, weights)


def importance_sample_points(
    logits,
    rows,
    oversampled,
    random_draw,
    num_points: int,
    num_uncertain: int,
    random_points: str = "fresh",
):
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
    uncertainty = -ops.abs(sample_points_per_row(ops.stop_gradient(logits), rows, oversampled))  # (B, R, k*P)
    if random_points == "fresh":
        _, chosen = ops.top_k(uncertainty, k=num_uncertain, sorted=False)  # the set, not its order
        extra = random_draw
    elif random_points == "oversampled":
        _, order = ops.top_k(uncertainty, k=uncertainty.shape[-1])  # most uncertain first
        chosen = order[..., :num_uncertain]
        _, pick = ops.top_k(random_draw, k=num_random)
        extra = _take_points(oversampled, ops.take_along_axis(order[..., num_uncertain:], pick, axis=2))
    else:
        raise ValueError(f"random_points must be 'fresh' or 'oversampled', got {random_points!r}")
    return ops.stop_gradient(ops.concatenate([_take_points(oversampled, chosen), ops.cast(extra, "float32")], axis=2))


def _take_points(coords, index):
    """coords (B, R, K, 2) at index (B, R, n) -> (B, R, n, 2)."""
    return ops.stack([ops.take_along_axis(coords[..., c], index, axis=2) for c in range(2)], axis=-1)

"""Multi-scale deformable attention (Zhu et al., Deformable DETR), in `keras.ops`.

Same computation as the official CUDA kernel / PyTorch `ms_deform_attn_core_pytorch`: bilinear
sampling with grid_sample semantics (align_corners=False, zero padding outside the map).
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from model.layers import Linear, register

# Inference on a CPU samples 512 (query, head) rows at a time: 512 x 48 corner reads of 128 bytes (3 MB)
# stay in cache between the gather and the sum; one R50 layer's sampling at 800x1216 takes less than half the time
# of all rows at once.
CPU_ROWS_PER_BLOCK = 512


def cpu_rows_per_block():
    """`CPU_ROWS_PER_BLOCK` on TensorFlow with no GPU, else None (a GPU wants one gather; JAX and torch
    run on GPUs here, and a loop of small blocks would serialise their kernels)."""
    if keras.backend.backend() != "tensorflow":
        return None
    if any(device.startswith("gpu") for device in keras.distribution.list_devices()):
        return None
    return CPU_ROWS_PER_BLOCK


def deformable_sample(value, spatial_shapes, locations, weights, one_gather=False, rows_per_block=None):
    """Weighted bilinear samples of every head and level: whole rows of D channels gathered per corner and
    summed by a small matmul per (batch, query, head) (grid_sample semantics).

    Args:
        value: (B, Lv, heads, D), the levels flattened row-major and concatenated.
        spatial_shapes: `levels` (height, width) pairs, in the value's order.
        locations: (B or 1, Lq, heads, levels, P, 2) points as (x, y) in [0, 1]; pixel centres sit at
            (k + 0.5) / size; points outside the map contribute zeros (align_corners=False, zero padding).
        weights: (B, Lq, heads, levels, P) weight of each sampled point.
        one_gather: read the 4 corners in one gather (4x the transient memory of one corner's; its
            gradient is one scatter instead of 4 concatenated ones, which training wants) instead of 4.
        rows_per_block: gather and sum this many (batch, query, head) rows at a time, in a loop
            (`ops.map`), so that the gathered corners stay in the CPU's cache instead of going to memory
            and back. None: all at once. For inference: the loop
            is not differentiated efficiently.

    Returns:
        (B, Lq, heads, D): the sum over levels and points of weight * bilinear sample.
    """
    batch, num_values, heads, head_dim = ops.shape(value)
    dtype = locations.dtype
    heights = ops.stack([ops.cast(h, "int32") for h, _ in spatial_shapes])  # (levels,)
    widths = ops.stack([ops.cast(w, "int32") for _, w in spatial_shapes])
    sizes = heights * widths
    starts = ops.cumsum(sizes) - sizes  # first row of each level in the value
    # broadcast per-level constants against (B, Lq, heads, levels, P)
    heights, widths, starts = (ops.reshape(t, (1, 1, 1, -1, 1)) for t in (heights, widths, starts))
    x = locations[..., 0] * ops.cast(widths, dtype) - 0.5
    y = locations[..., 1] * ops.cast(heights, dtype) - 0.5
    x0, y0 = ops.floor(x), ops.floor(y)
    # The official kernel's linear weights `l = x - x0`, `1 - l`: their gradient is the slope towards the
    # right corner also where x (or y) is an integer, as on every sampling point of the encoder at its
    # initialisation (integer offsets from pixel centres); `1 - |x - xi|` there takes the derivative of
    # |0|, which JAX sets to 1 and TensorFlow and PyTorch to 0 (dropping the left corner's term).
    lx, ly = x - x0, y - y0
    # Row r of the table is value[b, v, h] with r = (b * Lv + v) * heads + h: no transpose of the value.
    table = ops.reshape(value, (-1, head_dim))  # (B * Lv * heads, D)
    batch_rows = ops.reshape(ops.arange(batch, dtype="int32") * num_values, (-1, 1, 1, 1, 1))
    head_index = ops.reshape(ops.arange(heads, dtype="int32"), (1, 1, -1, 1, 1))
    result_shape = ops.shape(weights)
    rows = result_shape[0] * result_shape[1] * heads  # one per (batch, query, head)
    indices, corner_weights = [], []
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            corner = (lx if dx else 1.0 - lx) * (ly if dy else 1.0 - ly) * weights
            xi, yi = ops.cast(xi, "int32"), ops.cast(yi, "int32")
            inside = (xi >= 0) & (xi < widths) & (yi >= 0) & (yi < heights)
            corner = ops.where(inside, corner, ops.zeros_like(corner))  # (B, Lq, heads, levels, P)
            row = starts + ops.clip(yi, 0, heights - 1) * widths + ops.clip(xi, 0, widths - 1)
            indices.append(ops.reshape((batch_rows + row) * heads + head_index, (rows, -1)))
            corner_weights.append(ops.cast(ops.reshape(corner, (rows, 1, -1)), value.dtype))
    if one_gather or rows_per_block:
        indices, corner_weights = [ops.concatenate(indices, 1)], [ops.concatenate(corner_weights, 2)]
    if rows_per_block:
        output = _blockwise_sample(table, indices[0], corner_weights[0], rows_per_block)
        return ops.reshape(output, (result_shape[0], result_shape[1], heads, head_dim))
    output = 0.0
    for index, corner in zip(indices, corner_weights, strict=True):
        gathered = ops.take(table, ops.reshape(index, (-1,)), axis=0)  # (rows * samples, D)
        output = output + _weighted_sum(corner, ops.reshape(gathered, (rows, -1, head_dim)))  # (rows, 1, D)
    return ops.reshape(output, (result_shape[0], result_shape[1], heads, head_dim))


def _blockwise_sample(table, index, weights, rows_per_block):
    """`_weighted_sum` of the `table` rows at `index`, `rows_per_block` rows at a time.

    Args:
        table: (T, D). index: (R, S) int32 rows of the table. weights: (R, 1, S).

    Returns:
        (R, 1, D). The last block is padded with row 0 at weight 0.
    """
    rows, head_dim = ops.shape(index)[0], ops.shape(table)[1]
    blocks = (rows + rows_per_block - 1) // rows_per_block
    padding = blocks * rows_per_block - rows
    index = ops.reshape(ops.pad(index, ((0, padding), (0, 0))), (blocks, rows_per_block, -1))
    weights = ops.reshape(ops.pad(weights, ((0, padding), (0, 0), (0, 0))), (blocks, rows_per_block, 1, -1))

    def block(inputs):
        index, weights = inputs
        gathered = ops.take(table, ops.reshape(index, (-1,)), axis=0)  # (rows_per_block * S, D)
        return _weighted_sum(weights, ops.reshape(gathered, (rows_per_block, -1, head_dim)))

    return ops.reshape(ops.map(block, (index, weights)), (-1, 1, head_dim))[:rows]


def _weighted_sum(weights, samples):
    """(R, 1, S) weights x (R, S, D) samples -> (R, 1, D), as one batched matmul.

    On TensorFlow's CPU kernels the matmul beats a broadcast product and sum; on an H100 under `jax.jit` the
    two forms take the same time.
    """
    return ops.matmul(weights, samples)


def bilinear_sample(values, height, width, locations):
    """Samples one flattened feature map at normalised locations (grid_sample, zero padding).

    Args:
        values: (N, height * width, C) row-major feature map.
        height, width: map size.
        locations: (N, S, 2) points as (x, y) in [0, 1]; pixel centres sit at (k + 0.5) / size.

    Returns:
        (N, S, C) bilinearly interpolated values; points outside contribute zeros.
    """
    n, s = ops.shape(locations)[:2]
    locations = ops.reshape(locations, (n, s, 1, 1, 1, 2))
    weights = ops.ones((n, s, 1, 1, 1), locations.dtype)
    sampled = deformable_sample(values[:, :, None, :], [(height, width)], locations, weights)
    return sampled[:, :, 0]


def _grid_bias(num_heads, num_levels, num_points):
    """Official sampling-offset bias init: head h points along angle 2*pi*h/heads, point p at p+1."""
    thetas = np.arange(num_heads, dtype=np.float64) * (2.0 * math.pi / num_heads)
    grid = np.stack([np.cos(thetas), np.sin(thetas)], -1)
    grid = grid / np.abs(grid).max(-1, keepdims=True)
    grid = np.tile(grid[:, None, None, :], (1, num_levels, num_points, 1))
    grid = grid * np.arange(1, num_points + 1)[None, None, :, None]
    return grid.reshape(-1).astype("float32")


@register
class MultiScaleDeformableAttention(keras.layers.Layer):
    """Each query attends to `num_points` sampled locations per head and level.

    Args:
        hidden_dim: int, query/value channels.
        num_heads: int.
        num_levels: int, feature levels in the value.
        num_points: int, sampling points per head and level.

    Call:
        query: (B, Lq, C) queries (position already added).
        reference_points: (B or 1, Lq, 2) normalised (x, y) per query, the same on every level.
        value_input: (B, Lv, C), the levels flattened row-major and concatenated.
        spatial_shapes: list of `num_levels` (height, width) pairs, in the value's order.
        training: when True the sampling is rematerialised: its (B * Lq * heads * levels * points, D)
            corner reads are recomputed in the backward pass instead of kept from the forward (at
            2 x 512x512 they are 0.5 GB per layer), as the official CUDA kernel and `grid_sample` do.
            Otherwise, on TensorFlow without a GPU, it runs in cache-sized blocks (`cpu_rows_per_block`).
    Returns: (B, Lq, C).
    """

    def __init__(self, *, hidden_dim, num_heads, num_levels, num_points, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        samples = num_heads * num_levels * num_points
        kw = {"dtype": self.dtype_policy}
        self.sampling_offsets = Linear(
            samples * 2,
            kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant(_grid_bias(num_heads, num_levels, num_points)),
            name="sampling_offsets",
            **kw,
        )
        self.attention_weights = Linear(samples, kernel_initializer="zeros", name="attention_weights", **kw)
        self.value_proj = Linear(hidden_dim, kernel_initializer="glorot_uniform", name="value_proj", **kw)
        self.output_proj = Linear(hidden_dim, kernel_initializer="glorot_uniform", name="output_proj", **kw)

    def build(self, query_shape):
        for layer in (self.sampling_offsets, self.attention_weights, self.value_proj, self.output_proj):
            layer.build((None, None, self.hidden_dim))

    def call(self, query, reference_points, value_input, spatial_shapes, training=None):
        batch, num_queries, _ = ops.shape(query)
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        head_dim = self.hidden_dim // heads

        value = self.value_proj(value_input)  # (B, Lv, C)
        offsets = ops.reshape(self.sampling_offsets(query), (batch, num_queries, heads, levels, points, 2))
        weights = ops.reshape(self.attention_weights(query), (batch, num_queries, heads, levels * points))
        weights = ops.reshape(ops.softmax(weights, axis=-1), (batch, num_queries, heads, levels, points))

        locations = reference_points[:, :, None, None, None, :] + offsets / ops.cast(
            ops.stack([ops.stack([w, h]) for h, w in spatial_shapes])[:, None, :], offsets.dtype
        )  # (B, Lq, heads, levels, P, 2), offsets in pixels of their level
        value = ops.reshape(value, (batch, -1, heads, head_dim))
        if training:  # recomputed in the backward pass; one gather: one scatter in the backward pass
            sample = keras.remat(functools.partial(deformable_sample, one_gather=True))  # no keywords in graphs
            output = sample(value, spatial_shapes, locations, weights)
        else:  # (B, Lq, heads, head_dim)
            output = deformable_sample(value, spatial_shapes, locations, weights, rows_per_block=cpu_rows_per_block())
        output = ops.reshape(output, (batch, num_queries, self.hidden_dim))
        return self.output_proj(output)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "num_levels": self.num_levels,
            "num_points": self.num_points,
        }

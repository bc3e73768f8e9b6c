"""Multi-scale deformable attention (Zhu et al., Deformable DETR), in `keras.ops`.

Same computation as the official CUDA kernel / PyTorch `ms_deform_attn_core_pytorch`: bilinear
sampling with grid_sample semantics (align_corners=False, zero padding outside the map).
"""

import math

import keras
import numpy as np
from keras import ops

from model.layers import register


def bilinear_sample(values, height, width, locations):
    """Samples a flattened feature map at normalised locations (grid_sample, zero padding).

    Args:
        values: (N, height * width, C) row-major feature map.
        height, width: map size.
        locations: (N, S, 2) points as (x, y) in [0, 1]; pixel centres sit at (k + 0.5) / size.

    Returns:
        (N, S, C) bilinearly interpolated values; points outside contribute zeros.
    """
    x = locations[..., 0] * ops.cast(width, locations.dtype) - 0.5
    y = locations[..., 1] * ops.cast(height, locations.dtype) - 0.5
    x0, y0 = ops.floor(x), ops.floor(y)
    result = 0.0
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1.0 - ops.abs(x - xi)) * (1.0 - ops.abs(y - yi))  # (N, S)
            inside = (
                (xi >= 0) & (xi <= ops.cast(width - 1, x.dtype)) & (yi >= 0) & (yi <= ops.cast(height - 1, y.dtype))
            )
            weight = ops.where(inside, weight, ops.zeros_like(weight))
            xi = ops.clip(ops.cast(xi, "int32"), 0, width - 1)
            yi = ops.clip(ops.cast(yi, "int32"), 0, height - 1)
            index = yi * width + xi  # (N, S)
            gathered = ops.take_along_axis(values, index[..., None], axis=1)  # (N, S, C)
            result = result + gathered * ops.cast(weight[..., None], values.dtype)
    return result


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
        self.sampling_offsets = keras.layers.Dense(
            samples * 2,
            kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant(_grid_bias(num_heads, num_levels, num_points)),
            name="sampling_offsets",
            **kw,
        )
        self.attention_weights = keras.layers.Dense(samples, kernel_initializer="zeros", name="attention_weights", **kw)
        self.value_proj = keras.layers.Dense(hidden_dim, kernel_initializer="glorot_uniform", name="value_proj", **kw)
        self.output_proj = keras.layers.Dense(hidden_dim, kernel_initializer="glorot_uniform", name="output_proj", **kw)

    def build(self, query_shape):
        for layer in (self.sampling_offsets, self.attention_weights, self.value_proj, self.output_proj):
            layer.build((None, None, self.hidden_dim))

    def call(self, query, reference_points, value_input, spatial_shapes):
        batch = ops.shape(query)[0]
        num_queries = ops.shape(query)[1]
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        head_dim = self.hidden_dim // heads

        value = self.value_proj(value_input)  # (B, Lv, C)
        offsets = ops.reshape(self.sampling_offsets(query), (batch, num_queries, heads, levels, points, 2))
        weights = ops.reshape(self.attention_weights(query), (batch, num_queries, heads, levels * points))
        weights = ops.reshape(ops.softmax(weights, axis=-1), (batch, num_queries, heads, levels, points))

        output = 0.0
        start = 0
        for level, (height, width) in enumerate(spatial_shapes):
            size = height * width
            # [B, HW, C] -> [B * heads, HW, head_dim]
            level_value = ops.reshape(value[:, start : start + size], (batch, size, heads, head_dim))
            level_value = ops.reshape(ops.transpose(level_value, (0, 2, 1, 3)), (batch * heads, size, head_dim))
            start = start + size
            normalizer = ops.cast(ops.stack([width, height]), offsets.dtype)
            locations = reference_points[:, :, None, None, :] + offsets[:, :, :, level] / normalizer  # (B, Lq, h, P, 2)
            # [B, Lq, heads, P, 2] -> [B * heads, Lq * P, 2]
            locations = ops.reshape(ops.transpose(locations, (0, 2, 1, 3, 4)), (batch * heads, num_queries * points, 2))
            sampled = bilinear_sample(level_value, height, width, locations)  # (B * heads, Lq * P, head_dim)
            sampled = ops.reshape(sampled, (batch, heads, num_queries, points, head_dim))
            level_weights = ops.transpose(weights[:, :, :, level], (0, 2, 1, 3))  # (B, heads, Lq, P)
            output = output + ops.sum(sampled * level_weights[..., None], axis=3)  # (B, heads, Lq, head_dim)
        # [B, heads, Lq, head_dim] -> [B, Lq, heads * head_dim]
        output = ops.reshape(ops.transpose(output, (0, 2, 1, 3)), (batch, num_queries, self.hidden_dim))
        return self.output_proj(output)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "num_levels": self.num_levels,
            "num_points": self.num_points,
        }

"""Sine position encoding of a feature map (DETR style, normalised), as the official model."""

import math

from keras import ops


def sine_position_encoding(height, width, num_features, dtype="float32", temperature=10000.0):
    """Position encoding of an (height, width) grid, the same for every image.

    `y = cumsum / (last + 1e-6) * 2pi` per axis, `dim_t = temperature^(2 * (i // 2) / num_features)`,
    sin on even and cos on odd features (interleaved), output `concat(pos_y, pos_x)`.

    Args:
        height, width: grid size (ints or scalar tensors).
        num_features: int, features per axis (half the channels).

    Returns:
        (height, width, 2 * num_features) tensor.
    """
    scale = 2.0 * math.pi
    eps = 1e-6
    y = ops.cast(ops.arange(1, height + 1), dtype)
    x = ops.cast(ops.arange(1, width + 1), dtype)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    exponent = ops.cast(2 * (ops.arange(num_features) // 2), dtype) / num_features
    dim_t = ops.power(ops.cast(temperature, dtype), exponent)
    pos_y = _interleave_sin_cos(y[:, None] / dim_t)  # (H, F)
    pos_x = _interleave_sin_cos(x[:, None] / dim_t)  # (W, F)
    pos_y = ops.broadcast_to(pos_y[:, None, :], (height, width, num_features))
    pos_x = ops.broadcast_to(pos_x[None, :, :], (height, width, num_features))
    return ops.concatenate([pos_y, pos_x], axis=-1)


def _interleave_sin_cos(angles):
    """(N, F) -> (N, F): sin of even columns and cos of odd columns, interleaved."""
    n, f = ops.shape(angles)[0], angles.shape[-1]
    pairs = ops.stack([ops.sin(angles[:, 0::2]), ops.cos(angles[:, 1::2])], axis=-1)  # (N, F/2, 2)
    return ops.reshape(pairs, (n, f))

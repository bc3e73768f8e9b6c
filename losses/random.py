"""Stateless random draws of the criterion's points, on every backend.

A seed is a (2,) int32 tensor. `uniform(seed, shape)` is a pure function of the seed and the shape, and
`fold_in(seed, data)` derives an independent seed from an int, so that every image and every prediction set
of a training step draws from its own seed, whatever the batch split. Each backend's own counter-based
generator is used (TensorFlow's Philox, JAX's threefry; PyTorch: a generator seeded from the pair): the
same seed gives different numbers on different backends, and comparisons across backends pass the points
explicitly.
"""

from __future__ import annotations

import keras
import numpy as np


def uniform(seed, shape) -> object:
    """Uniform float32 in [0, 1) of `shape` (ints, or TensorFlow scalars in a traced graph) from `seed`."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.random.stateless_uniform(shape, tf.cast(seed, tf.int32))
    if backend == "jax":
        import jax

        return jax.random.uniform(jax.random.wrap_key_data(seed.astype("uint32"), impl="threefry2x32"), shape)
    if backend == "torch":
        import torch

        seed = keras.ops.convert_to_numpy(seed).astype(np.int64)
        generator = torch.Generator(device=keras.ops.convert_to_tensor(0).device)
        generator.manual_seed(int(seed[0] & 0xFFFFFFFF) << 32 | int(seed[1] & 0xFFFFFFFF))
        return torch.rand([int(s) for s in shape], generator=generator, device=generator.device)
    raise ValueError(f"no stateless random draws for the {backend!r} backend")


def fold_in(seed, data: int):
    """A new (2,) int32 seed from `seed` and the int `data` (TensorFlow and JAX: their own fold-in)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int32), data)
    if backend == "jax":
        import jax

        key = jax.random.fold_in(jax.random.wrap_key_data(seed.astype("uint32"), impl="threefry2x32"), data)
        return jax.random.key_data(key).astype("int32")
    words = np.random.SeedSequence([int(s) & 0xFFFFFFFF for s in keras.ops.convert_to_numpy(seed)] + [data])
    return keras.ops.convert_to_tensor(words.generate_state(2, np.uint32).view(np.int32))


def image_seeds(seed: int, step: int, count: int) -> np.ndarray:
    """(count, 2) int32 host seeds of images 0 .. count - 1 of optimizer step `step` (the JAX and PyTorch
    steps; the TensorFlow step derives its seeds in its graph)."""
    return np.stack([np.random.SeedSequence([seed, step, i]).generate_state(2, np.uint32) for i in range(count)]).view(
        np.int32
    )

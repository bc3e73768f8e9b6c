"""Every layer: get_config round-trip with identical outputs; deformable attention against float64 NumPy."""

import keras
import numpy as np
import pytest

from model import (
    BottleneckBlock,
    ConvNorm,
    DecoderLayer,
    DeformableEncoderLayer,
    FrozenBatchNorm,
    Mask2Former,
    MaskedAttentionDecoder,
    MSDeformAttnPixelDecoder,
    MultiHeadAttention,
    MultiScaleDeformableAttention,
    ResNet,
)
from model.layers import Linear, resize_bilinear
from model.ms_deform_attn import bilinear_sample, cpu_rows_per_block, deformable_sample
from tests.helpers import tiny_config

rng = np.random.default_rng(0)


def rand(*shape):
    return rng.normal(size=shape).astype("float32")


SHAPES = [(4, 6), (2, 3)]
TINY_FEATURES = {f"res{i + 2}": rand(1, 16 // 2**i, 24 // 2**i, 8 * 2**i) for i in range(4)}
TINY_DECODER_INPUTS = ([rand(1, 2, 3, 16), rand(1, 4, 6, 16), rand(1, 8, 12, 16)], rand(1, 32, 48, 16))

CASES = {
    "Linear": (Linear, {"units": 3}, (rand(2, 4, 5, 6),), {}),
    "FrozenBatchNorm": (FrozenBatchNorm, {}, (rand(2, 5, 5, 4),), {}),
    "ConvNorm": (ConvNorm, {"filters": 4, "kernel_size": 3, "strides": 2}, (rand(1, 7, 9, 3),), {}),
    "BottleneckBlock": (
        BottleneckBlock,
        {"out_channels": 8, "bottleneck_channels": 2, "strides": 2, "use_shortcut_projection": True},
        (rand(1, 8, 8, 4),),
        {},
    ),
    "ResNet": (
        ResNet,
        {"stage_blocks": (1, 2, 1, 1), "stem_channels": 4, "res2_channels": 8},
        (rand(1, 64, 32, 3),),
        {},
    ),
    "MultiScaleDeformableAttention": (
        MultiScaleDeformableAttention,
        {"hidden_dim": 8, "num_heads": 2, "num_levels": 2, "num_points": 3},
        (rand(2, 5, 8), rng.uniform(size=(2, 5, 2)).astype("float32"), rand(2, 30, 8)),
        {"spatial_shapes": SHAPES},
    ),
    "DeformableEncoderLayer": (
        DeformableEncoderLayer,
        {"hidden_dim": 8, "num_heads": 2, "num_levels": 2, "num_points": 3, "ffn_dim": 16},
        (rand(2, 30, 8), rand(1, 30, 8), rng.uniform(size=(1, 30, 2)).astype("float32")),
        {"spatial_shapes": SHAPES},
    ),
    "MSDeformAttnPixelDecoder": (
        MSDeformAttnPixelDecoder,
        {
            "in_channels": {k: v.shape[-1] for k, v in TINY_FEATURES.items()},
            "conv_dim": 16,
            "mask_dim": 8,
            "num_heads": 2,
            "num_points": 2,
            "encoder_layers": 1,
            "encoder_ffn_dim": 16,
            "group_norm_groups": 4,
        },
        (TINY_FEATURES,),
        {},
    ),
    "MultiHeadAttention": (
        MultiHeadAttention,
        {"hidden_dim": 8, "num_heads": 2},
        (rand(2, 3, 8), rand(2, 5, 8), rand(2, 5, 8)),
        {"allowed": rng.uniform(size=(2, 3, 5)) > 0.3},
    ),
    "DecoderLayer": (
        DecoderLayer,
        {"hidden_dim": 8, "num_heads": 2, "ffn_dim": 16},
        (rand(2, 3, 8), rand(1, 3, 8), rand(2, 5, 8), rand(1, 5, 8), np.ones((2, 3, 5), bool)),
        {},
    ),
    "MaskedAttentionDecoder": (
        MaskedAttentionDecoder,
        {
            "num_classes": 3,
            "num_queries": 4,
            "hidden_dim": 16,
            "num_heads": 2,
            "ffn_dim": 16,
            "num_layers": 2,
            "mask_dim": 16,
        },
        TINY_DECODER_INPUTS,
        {},
    ),
}


def _outputs(x):
    return [np.asarray(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(x)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_config_round_trip(name):
    cls, kwargs, inputs, call_kwargs = CASES[name]
    layer = cls(**kwargs)
    expected = layer(*inputs, **call_kwargs)
    config = layer.get_config()
    for key, value in kwargs.items():
        assert config[key] == value, key
    restored = cls.from_config(
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer)).get_config()
    )
    assert restored.get_config() == config
    restored(*inputs, **call_kwargs)
    restored.set_weights(layer.get_weights())
    for a, b in zip(_outputs(expected), _outputs(restored(*inputs, **call_kwargs)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_model_config_round_trip():
    model = Mask2Former(**{k: getattr(tiny_config().model, k) for k in ("num_classes", "num_queries", "hidden_dim")})
    restored = Mask2Former.from_config(model.get_config())
    assert restored.get_config() == model.get_config()


def _grid_sample_float64(value, locations):
    """Loop-by-loop bilinear sampling (grid_sample, align_corners=False, zero padding) in float64."""
    height, width, channels = value.shape
    out = np.zeros((len(locations), channels))
    for s, (lx, ly) in enumerate(locations):
        x, y = lx * width - 0.5, ly * height - 0.5
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for xi in (x0, x0 + 1):
            for yi in (y0, y0 + 1):
                if 0 <= xi < width and 0 <= yi < height:
                    out[s] += (1 - abs(x - xi)) * (1 - abs(y - yi)) * value[yi, xi]
    return out


def test_bilinear_sampling_matches_float64_loops_including_borders():
    value = rng.normal(size=(5, 7, 3))
    # Points inside, on borders and outside the map (zero padding must fade them out).
    locations = np.concatenate([rng.uniform(-0.2, 1.2, (200, 2)), [[0, 0], [1, 1], [0.5 / 7, 0.5 / 5], [1.1, 0.5]]])
    ours = bilinear_sample(value.reshape(1, 35, 3), 5, 7, locations[None])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours)[0], _grid_sample_float64(value, locations), atol=1e-12)


def test_bilinear_sampling_gradient_equals_torch_grid_sample_also_on_pixel_centres():
    """The gradient for the locations is grid_sample's (and the official kernel's) also where a point sits
    exactly on a pixel centre, as every encoder point does at initialisation (integer offsets from pixel
    centres): the slope towards the right (lower) neighbour, zero padding outside, not the subgradient of
    |0| (which JAX sets to 1, TensorFlow and PyTorch to 0)."""
    import tensorflow as tf

    torch = pytest.importorskip("torch")
    height, width = 4, 8  # powers of two: the centres (k + 0.5) / size are exact in binary
    value = rng.normal(size=(height, width, 3))
    centres = np.stack(np.meshgrid((np.arange(width) + 0.5) / width, (np.arange(height) + 0.5) / height), -1)
    locations = np.concatenate([centres.reshape(-1, 2), rng.uniform(-0.1, 1.1, (20, 2))])
    cotangent = rng.normal(size=(len(locations), 3))
    points = tf.constant(locations[None])
    with tf.GradientTape() as tape:
        tape.watch(points)
        sampled = bilinear_sample(tf.constant(value.reshape(1, -1, 3)), height, width, points)
    ours = tape.gradient(sampled, points, output_gradients=tf.constant(cotangent[None])).numpy()[0]
    grid = torch.tensor(2 * locations[None, None] - 1, requires_grad=True)  # (1, 1, S, 2) in [-1, 1]
    reference = torch.nn.functional.grid_sample(
        torch.from_numpy(value.transpose(2, 0, 1)[None]), grid, align_corners=False, padding_mode="zeros"
    )  # (1, 3, 1, S)
    reference.backward(torch.from_numpy(cotangent.T[None, :, None]))
    np.testing.assert_allclose(ours, 2 * grid.grad.numpy()[0, 0], atol=1e-12)


def test_deformable_attention_matches_float64_numpy():
    hidden, heads, levels, points = 8, 2, 2, 3
    layer = MultiScaleDeformableAttention(
        hidden_dim=hidden, num_heads=heads, num_levels=levels, num_points=points, dtype="float64"
    )
    query = rng.normal(size=(1, 4, hidden))
    reference = rng.uniform(size=(1, 4, 2))
    value_input = rng.normal(size=(1, 30, hidden))
    layer(query, reference, value_input, spatial_shapes=SHAPES)
    for w in layer.weights:
        w.assign(rng.normal(0, 0.5, w.shape))
    ours = keras.ops.convert_to_numpy(layer(query, reference, value_input, spatial_shapes=SHAPES))[0]

    def dense(layer_, x):
        return x @ layer_.kernel.numpy() + layer_.bias.numpy()

    value = dense(layer.value_proj, value_input[0])
    offsets = dense(layer.sampling_offsets, query[0]).reshape(4, heads, levels, points, 2)
    weights = dense(layer.attention_weights, query[0]).reshape(4, heads, levels * points)
    weights = (np.exp(weights) / np.exp(weights).sum(-1, keepdims=True)).reshape(4, heads, levels, points)
    head_dim = hidden // heads
    out = np.zeros((4, heads, head_dim))
    start = 0
    for level, (h, w) in enumerate(SHAPES):
        level_value = value[start : start + h * w].reshape(h, w, heads, head_dim)
        start += h * w
        for q in range(4):
            for head in range(heads):
                locs = reference[0, q] + offsets[q, head, level] / np.array([w, h])
                sampled = _grid_sample_float64(level_value[:, :, head], locs)
                out[q, head] += (weights[q, head, level][:, None] * sampled).sum(0)
    expected = dense(layer.output_proj, out.reshape(4, hidden))
    np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_resize_bilinear_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    for (h, w), (oh, ow) in [((5, 7), (40, 56)), ((40, 56), (5, 7)), ((13, 9), (20, 31))]:
        x = rng.normal(size=(2, h, w, 3))
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(oh, ow), mode="bilinear", align_corners=False
        ).numpy()
        ours = keras.ops.convert_to_numpy(resize_bilinear(keras.ops.convert_to_tensor(x), (oh, ow)))
        np.testing.assert_allclose(ours, expected.transpose(0, 2, 3, 1), atol=1e-12)


def assert_recomputed_equals_kept(layer, x, *args, **kwargs):
    """`layer(x, *args, training=True)` (rematerialised) against training=False, in a graph as the training
    step runs it: the same output and gradients for `x` and every trainable weight (random, float64)."""
    import tensorflow as tf

    layer(x, *args, **kwargs)
    for w in layer.weights:
        w.assign(rng.normal(0, 0.5, w.shape))

    @tf.function
    def output_and_gradients(training):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, *args, **kwargs, training=training)
            loss = tf.reduce_sum(out * tf.sin(out))
        return [out, *tape.gradient(loss, [x, *layer.trainable_weights])]

    kept, recomputed = output_and_gradients(False), output_and_gradients(True)
    assert len(recomputed) == 2 + len(layer.trainable_weights) and all(g is not None for g in recomputed)
    for a, b in zip(kept, recomputed, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-12)


def test_deformable_attention_training_recomputes_the_sampling_with_the_same_gradients():
    """training=True rematerialises the sampling (keras.remat): same output and gradients, in float64."""
    layer = MultiScaleDeformableAttention(hidden_dim=8, num_heads=2, num_levels=2, num_points=3, dtype="float64")
    query = keras.ops.convert_to_tensor(rng.normal(size=(2, 30, 8)))
    reference = keras.ops.convert_to_tensor(rng.uniform(-0.1, 1.1, size=(1, 30, 2)))
    assert_recomputed_equals_kept(layer, query, reference, query, spatial_shapes=SHAPES)


@pytest.mark.parametrize("whole_layer", [False, True], ids=["feed-forward", "recompute_encoder"])
def test_encoder_layer_training_recomputes_the_feed_forward_with_the_same_gradients(whole_layer):
    """training=True rematerialises the encoder layer's feed-forward block (keras.remat, its activations
    recomputed in the backward pass), and with `recompute` (train.recompute_encoder) the whole layer: same
    output and gradients for the input and every weight, in float64."""
    layer = DeformableEncoderLayer(hidden_dim=8, num_heads=2, num_levels=2, num_points=3, ffn_dim=16, dtype="float64")
    layer.recompute = whole_layer
    x = keras.ops.convert_to_tensor(rng.normal(size=(2, 30, 8)))
    pos = keras.ops.convert_to_tensor(rng.normal(size=(1, 30, 8)))
    reference = keras.ops.convert_to_tensor(rng.uniform(-0.1, 1.1, size=(1, 30, 2)))
    assert_recomputed_equals_kept(layer, x, pos, reference, spatial_shapes=SHAPES)


def test_linear_equals_dense_in_fewer_graph_ops():
    """Linear is Dense with a reshape around a 2-D matmul: same numbers (float64), same weight names, and
    fewer graph ops for a dynamic (..., C) input than Keras' tensordot (the point of it: faster tracing)."""
    import tensorflow as tf

    x = rng.normal(size=(2, 3, 4, 6))
    linear, dense = (
        Linear(5, activation="relu", dtype="float64"),
        keras.layers.Dense(5, activation="relu", dtype="float64"),
    )
    linear.build(x.shape)
    dense.build(x.shape)
    dense.set_weights(linear.get_weights())
    assert [v.path for v in linear.weights] == [v.path.replace(dense.name, linear.name) for v in dense.weights]
    np.testing.assert_allclose(linear(x), dense(x), rtol=1e-14, atol=0)
    assert linear(x[0, 0]).shape == (4, 5)  # rank 2 goes straight to Dense
    spec = tf.TensorSpec([None, None, 6], tf.float64)  # (batch, tokens, channels), as in the model
    ops_of = {
        layer.name: len(tf.function(layer, input_signature=[spec]).get_concrete_function().graph.get_operations())
        for layer in (linear, dense)
    }
    assert ops_of[linear.name] < ops_of[dense.name], ops_of


def test_blockwise_sampling_equals_one_gather_in_a_graph():
    """Inference on a CPU samples block by block (cache-sized); blocks of 3 rows with a remainder (2 x 5 x 2
    = 20 rows), traced as test.py traces, give the all-at-once numbers in float64."""
    import tensorflow as tf

    assert cpu_rows_per_block() is not None  # the default path here: TensorFlow on a CPU
    value = rng.normal(size=(2, 30, 2, 4))
    locations = rng.uniform(-0.2, 1.2, size=(2, 5, 2, 2, 3, 2))
    weights = rng.uniform(size=(2, 5, 2, 2, 3))
    spec = [tf.TensorSpec([None] * x.ndim, tf.float64) for x in (value, locations, weights)]

    def sample(rows_per_block):
        return tf.function(
            lambda v, loc, w: deformable_sample(v, SHAPES, loc, w, rows_per_block=rows_per_block), input_signature=spec
        )(value, locations, weights).numpy()

    whole = sample(None)
    np.testing.assert_allclose(sample(3), whole, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(sample(64), whole, rtol=1e-13, atol=1e-13)  # one padded block

"""Swin backbone: layer contract, official geometry (padding, shift on small maps), drop path,
`.keras` round trip of a Swin Mask2Former, parameter counts against the reference."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from config import Mask2FormerConfig
from model import Mask2Former, PatchMerging, ResNet, SwinBlock, SwinTransformer, WindowAttention, build_model
from model.checkpoints import load_detectron2_state, to_detectron2_state
from model.swin import relative_position_index, shifted_window_mask
from tests.helpers import tiny_config, tiny_swin_config

rng = np.random.default_rng(0)


def rand(*shape):
    return rng.normal(size=shape).astype("float32")


TINY_SWIN = {"embed_dim": 8, "depths": (1, 2, 1, 2), "num_heads": (1, 2, 2, 4), "window_size": 3}


CASES = {
    "WindowAttention": (WindowAttention, {"dim": 8, "num_heads": 2, "window_size": 3}, (rand(4, 9, 8),)),
    "SwinBlock": (
        SwinBlock,
        {"dim": 8, "num_heads": 2, "window_size": 3, "shift_size": 1, "mlp_ratio": 2.0, "drop_path": 0.1},
        (rand(2, 5, 7, 8),),
    ),
    "PatchMerging": (PatchMerging, {"dim": 4}, (rand(1, 5, 7, 4),)),
    "SwinTransformer": (SwinTransformer, TINY_SWIN, (rand(1, 36, 52, 3),)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_config_round_trip(name):
    cls, kwargs, inputs = CASES[name]
    layer = cls(**kwargs)
    expected = layer(*inputs)
    config = layer.get_config()
    for key, value in kwargs.items():
        assert config[key] == value, key
    restored = cls.from_config(
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer)).get_config()
    )
    assert restored.get_config() == config
    restored(*inputs)
    restored.set_weights(layer.get_weights())
    for a, b in zip(keras.tree.flatten(expected), keras.tree.flatten(restored(*inputs)), strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_relative_position_index_is_the_official_buffer():
    """Official: index[(i, j), (k, m)] = (i - k + w - 1) * (2w - 1) + (j - m + w - 1), row-major tokens."""
    w = 4
    tokens = list(itertools.product(range(w), range(w)))
    expected = [[(i - k + w - 1) * (2 * w - 1) + (j - m + w - 1) for k, m in tokens] for i, j in tokens]
    np.testing.assert_array_equal(relative_position_index(w), expected)


def test_shifted_window_mask_separates_the_regions_brought_together_by_the_shift():
    """Padded map 6 x 3, window 3, shift 1: rows fall in regions [0, 3), [3, 5), [5, 6); columns [0, 0),
    [0, 2), [2, 3). Two tokens of a window may attend to each other only inside one region."""
    mask = keras.ops.convert_to_numpy(shifted_window_mask(6, 3, 3, 1, "float32"))
    assert mask.shape == (2, 9, 9)

    def region(r, c):
        return (int(r >= 3) + int(r >= 5)) * 3 + int(c >= 0) + int(c >= 2)

    for window, row0 in enumerate((0, 3)):
        labels = [region(row0 + i, j) for i in range(3) for j in range(3)]
        expected = np.where(np.not_equal.outer(labels, labels), -100.0, 0.0)
        np.testing.assert_array_equal(mask[window], expected)


def test_features_keep_the_official_sizes_on_odd_maps_smaller_than_the_window():
    """72 x 100 -> patches 18 x 25 -> 9 x 13 -> 5 x 7 -> 3 x 4 (merging pads to even): padded, not cropped."""
    backbone = SwinTransformer(**{**TINY_SWIN, "window_size": 7})
    features = backbone(rand(2, 72, 100, 3))
    shapes = {name: tuple(v.shape) for name, v in features.items()}
    assert shapes == {"res2": (2, 18, 25, 8), "res3": (2, 9, 13, 16), "res4": (2, 5, 7, 32), "res5": (2, 3, 4, 64)}
    specs = backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in specs.items()} == {
        "res2": (8, 4),
        "res3": (16, 8),
        "res4": (32, 16),
        "res5": (64, 32),
    }
    # The shift is kept on odd blocks even where the whole map fits in one window (official behaviour).
    assert [block.shift_size for block in backbone.stages[3]] == [0, 3]


def test_shift_changes_the_output_even_when_the_map_is_smaller_than_the_window():
    """A 3 x 4 map, window 7: with the shift, tokens from different regions no longer see each other."""
    x = rand(1, 3, 4, 8)
    shifted = SwinBlock(dim=8, num_heads=2, window_size=7, shift_size=3)
    plain = SwinBlock(dim=8, num_heads=2, window_size=7, shift_size=0)
    shifted(x), plain(x)
    plain.set_weights(shifted.get_weights())
    assert np.abs(keras.ops.convert_to_numpy(shifted(x)) - keras.ops.convert_to_numpy(plain(x))).max() > 1e-3


def test_drop_path_only_at_training():
    block = SwinBlock(dim=8, num_heads=2, window_size=3, shift_size=1, drop_path=0.5)
    x = rand(64, 4, 4, 8)
    inference = keras.ops.convert_to_numpy(block(x))
    np.testing.assert_array_equal(inference, keras.ops.convert_to_numpy(block(x, training=False)))
    trained = keras.ops.convert_to_numpy(block(x, training=True))
    # Per sample, each residual branch is dropped or scaled by 1 / keep: an exact identity for some samples.
    identity = np.all(trained == x, axis=(1, 2, 3))
    assert 0 < identity.sum() < 64
    rates = [b.drop_path for blocks in SwinTransformer(drop_path_rate=0.3).stages for b in blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.3, 12))  # official linear rule over all blocks


@pytest.fixture(scope="module")
def swin_model():
    """`tiny_swin_config`'s model with non-trivial values everywhere (zero-initialised kernels included),
    shared by the tests below, which do not change it."""
    model = build_model(tiny_swin_config())
    for w in model.weights:
        w.assign(w.numpy() + rng.normal(0, 0.05, w.shape).astype(w.dtype))
    return model


def test_mask2former_takes_the_backbone_object_and_round_trips_through_a_keras_file(tmp_path, swin_model):
    model = swin_model
    assert isinstance(model.backbone, SwinTransformer) and model.backbone.name == "backbone"
    images = rng.uniform(0, 255, (1, 72, 100, 3)).astype("float32")
    model.save(tmp_path / "swin.keras")
    restored = keras.saving.load_model(tmp_path / "swin.keras")
    assert isinstance(restored.backbone, SwinTransformer)
    assert restored.backbone.get_config() == model.backbone.get_config()
    a, b = model(images), restored(images)
    np.testing.assert_array_equal(a["pred_masks"], b["pred_masks"])
    np.testing.assert_array_equal(a["aux_outputs"][2]["pred_logits"], b["aux_outputs"][2]["pred_logits"])


def test_a_backbone_object_plugs_in_directly_and_a_wrong_one_is_refused():
    backbone = SwinTransformer(**TINY_SWIN, name="backbone")
    model = Mask2Former(backbone=backbone, num_classes=3, num_queries=4, hidden_dim=16, num_heads=2,
                        decoder_ffn_dim=16, num_decoder_layers=2, pixel_decoder_dim=16, mask_dim=16,
                        encoder_layers=1, encoder_ffn_dim=16, group_norm_groups=4)  # fmt: skip
    assert model(rand(1, 64, 64, 3) * 50 + 100)["pred_masks"].shape == (1, 4, 16, 16)
    assert Mask2Former.from_config(model.get_config()).backbone.get_config() == backbone.get_config()
    assert isinstance(Mask2Former().backbone, ResNet)  # no backbone given: ResNet-50

    class Flat(keras.layers.Layer):
        def output_shape(self):
            return {"res2": SwinTransformer().output_shape()["res2"]}

    with pytest.raises(ValueError, match="res2..res5 at strides 4, 8, 16, 32"):
        Mask2Former(backbone=Flat())


def test_detectron2_names_round_trip_and_the_index_buffer_is_never_loaded(swin_model):
    model = swin_model
    state = to_detectron2_state(model)
    backbone_names = sorted(n for n in state if n.startswith("backbone."))
    assert "backbone.patch_embed.proj.weight" in state and state["backbone.patch_embed.proj.weight"].shape == (
        8,
        3,
        4,
        4,
    )
    assert state["backbone.layers.1.blocks.1.attn.qkv.weight"].shape == (48, 16)
    assert state["backbone.layers.2.blocks.0.attn.relative_position_bias_table"].shape == (25, 2)
    assert state["backbone.layers.0.downsample.reduction.weight"].shape == (16, 32)
    assert "backbone.layers.0.downsample.reduction.bias" not in state
    assert {f"backbone.norm{i}.weight" for i in range(4)} <= set(backbone_names)
    assert "backbone.layers.3.downsample.reduction.weight" not in state
    other = build_model(tiny_swin_config())
    noisy = {**state, "backbone.layers.0.blocks.0.attn.relative_position_index": rng.integers(0, 25, (9, 9))}
    report = load_detectron2_state(other, noisy)
    assert not report.unexpected and len(report.loaded) == len(state)
    images = rng.uniform(0, 255, (1, 64, 96, 3)).astype("float32")
    np.testing.assert_array_equal(model(images)["pred_masks"], other(images)["pred_masks"])


def test_every_trainable_parameter_gets_a_gradient(swin_model):
    model = swin_model  # every weight perturbed
    images = tf.random.uniform((2, 64, 96, 3), 0, 255, seed=1)
    with tf.GradientTape() as tape:
        out = model(images, training=True)
        loss = sum(tf.reduce_mean(tf.square(s["pred_masks"])) for s in [out] + out["aux_outputs"])
        loss += sum(tf.reduce_mean(tf.square(s["pred_logits"])) for s in [out] + out["aux_outputs"])
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [w.path for w, g in zip(model.trainable_weights, grads, strict=True) if g is None or not np.any(g)]
    assert not missing, f"no gradient reaches: {missing}"
    assert not model.non_trainable_weights  # Swin has no frozen batch norm


def _reference_count(config):
    """Parameters of the reference built like `config` (HF's unused final `swin.layernorm` left out:
    the official D2 Swin has `norm0..3` only)."""
    from tests.hf_reference import build_hf

    hf = build_hf(config)
    return sum(p.numel() for name, p in hf.named_parameters() if ".swin.layernorm." not in name)


def _swin_config(size):
    if size == "tiny":
        return tiny_swin_config()
    config = Mask2FormerConfig()
    m = config.model
    m.backbone, m.num_classes = "swin", 133  # COCO panoptic
    if size == "L":
        m.swin_embed_dim, m.swin_depths, m.swin_num_heads, m.swin_window_size = 192, (2, 2, 18, 2), (6, 12, 24, 48), 12
        m.num_queries = 200
    return config.validate()


@pytest.mark.parametrize(
    "size, millions",
    [("tiny", None), pytest.param("T", 47, marks=pytest.mark.slow), pytest.param("L", 216, marks=pytest.mark.slow)],
)
def test_coco_parameter_counts_equal_the_reference(size, millions):
    """Official MODEL_ZOO: Swin-T 47M, Swin-L 216M (COCO panoptic). Parameters: 47.4M and 215.5M; the
    state dict adds the fixed `relative_position_index` buffers (24 x 144^2 = 0.50M for Swin-L: 216.0M).
    The full-size builds take 15 s and more (-m slow); the tiny Swin checks the count against the reference."""
    config = _swin_config(size)
    model = build_model(config)
    ours = model.count_params()
    buffers = sum(block.attn.relative_position_index.size for blocks in model.backbone.stages for block in blocks)
    print(f"Swin-{size} COCO panoptic: {ours:,} parameters ({(ours + buffers) / 1e6:.1f}M with index buffers)")
    assert millions is None or round(ours / 1e6) == millions
    pytest.importorskip("transformers")
    reference = _reference_count(config)
    print(f"reference {reference:,}")
    assert ours == reference


def test_optimizer_groups_follow_the_official_swin_rules(swin_model):
    """No weight decay on Swin's norms and relative position bias tables (official build_optimizer)."""
    from training.optimizer import parameter_groups

    model = swin_model
    groups = parameter_groups(model)
    no_decay = {id(v) for v in groups["no_weight_decay"]}
    for v in model.backbone.trainable_variables:
        exempt = v.path.endswith(("relative_position_bias_table", "gamma", "beta"))
        assert (id(v) in no_decay) == exempt, v.path
    assert {id(v) for v in groups["backbone"]} == {id(v) for v in model.backbone.trainable_variables}


def test_configs_of_keras_files_written_before_the_backbone_argument_still_load():
    """Older `.keras` files store flattened `backbone_*` arguments instead of a serialised backbone."""
    model = build_model(tiny_config())
    old = {k: v for k, v in model.get_config().items() if k != "backbone"}
    old.update(backbone_stage_blocks=[1, 1, 1, 1], backbone_stem_channels=16, backbone_res2_channels=32)
    restored = Mask2Former.from_config(old)
    assert restored.backbone.get_config() == model.backbone.get_config()


def test_reference_names_from_save_pretrained_map_like_the_live_model(tmp_path, swin_model):
    """`save_pretrained` writes the Swin backbone under transformers 4.x names (as hub files are)."""
    pytest.importorskip("transformers")
    from safetensors.numpy import load_file

    from tests.hf_reference import build_hf, hf_to_detectron2

    hf = build_hf(tiny_swin_config())
    hf.save_pretrained(tmp_path)
    saved = hf_to_detectron2(load_file(tmp_path / "model.safetensors"))
    live = hf_to_detectron2(hf.state_dict())
    assert sorted(saved) == sorted(live)
    assert set(live) - {"criterion.empty_weight"} == set(to_detectron2_state(swin_model))
    for name, value in live.items():
        np.testing.assert_array_equal(saved[name], value, err_msg=name)


def _official_block_float64(block, x):
    """The official SwinTransformerBlock, window by window in float64 NumPy (slices, not reshapes)."""
    from scipy.special import erf

    def layer_norm(t, norm):
        mean, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
        return (t - mean) / np.sqrt(var + 1e-5) * norm.gamma.numpy() + norm.beta.numpy()

    def dense(t, layer):
        return t @ layer.kernel.numpy() + layer.bias.numpy()

    w, s, heads, (batch, height, width, channels) = block.window_size, block.shift_size, block.num_heads, x.shape
    padded_h, padded_w = -(-height // w) * w, -(-width // w) * w
    y = np.zeros((batch, padded_h, padded_w, channels))
    y[:, :height, :width] = layer_norm(x, block.norm1)
    y = np.roll(y, (-s, -s), axis=(1, 2))
    regions = np.zeros((padded_h, padded_w))  # official img_mask: 3 x 3 slices of the padded map
    cuts = (slice(0, -w), slice(-w, -s), slice(-s, None)) if s else (slice(None),)
    for count, (rows, cols) in enumerate(itertools.product(cuts, cuts)):
        regions[rows, cols] = count
    table = block.attn.relative_position_bias_table.numpy()
    tokens = list(itertools.product(range(w), range(w)))
    bias = np.array([[table[(i - k + w - 1) * (2 * w - 1) + (j - m + w - 1)] for k, m in tokens] for i, j in tokens])
    out = np.zeros_like(y)
    head_dim = channels // heads
    for b, top, left in itertools.product(range(batch), range(0, padded_h, w), range(0, padded_w, w)):
        window = y[b, top : top + w, left : left + w].reshape(-1, channels)
        labels = regions[top : top + w, left : left + w].reshape(-1)
        q, k, v = np.split(dense(window, block.attn.qkv), 3, axis=-1)
        merged = []
        for h in range(heads):
            part = slice(h * head_dim, (h + 1) * head_dim)
            logits = q[:, part] * head_dim**-0.5 @ k[:, part].T + bias[:, :, h]
            logits += np.where(labels[:, None] != labels[None, :], -100.0, 0.0) if s else 0.0
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            merged.append(weights / weights.sum(-1, keepdims=True) @ v[:, part])
        out[b, top : top + w, left : left + w] = dense(np.concatenate(merged, -1), block.attn.proj).reshape(w, w, -1)
    x = x + np.roll(out, (s, s), axis=(1, 2))[:, :height, :width]
    hidden = dense(layer_norm(x, block.norm2), block.fc1)
    return x + dense(0.5 * hidden * (1 + erf(hidden / np.sqrt(2))), block.fc2)


@pytest.mark.parametrize("shift, size", [(0, (5, 7)), (2, (5, 7)), (2, (3, 4))])
def test_block_matches_the_official_computation_in_float64(shift, size):
    """Window 4 on maps that are not a multiple of it (padding) or smaller than it (shift kept).

    Open: the whole block agrees to ~3e-8 (relative 4e-6), its window attention alone to 1e-15; the
    source of the remainder is not found yet, so the bound is 1e-6 (the acceptance bound in float64)."""
    block = SwinBlock(dim=8, num_heads=2, window_size=4, shift_size=shift, dtype="float64")
    x = rng.normal(size=(2, *size, 8))
    block(x)
    for weight in block.weights:
        weight.assign(rng.normal(0, 0.5, weight.shape) + (1.0 if weight.path.endswith("gamma") else 0.0))
    ours = keras.ops.convert_to_numpy(block(x))
    np.testing.assert_allclose(ours, _official_block_float64(block, x), rtol=0, atol=1e-6)

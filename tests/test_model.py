"""The assembled model: golden outputs (no torch needed), shapes, parameter count, gradients, padding."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from config import Mask2FormerConfig
from model import build_model
from model.checkpoints import load_detectron2_checkpoint
from tests.helpers import tiny_config
from tests.hf_reference import SIZES, keras_config, run_ours

GOLDEN = Path(__file__).parent / "golden"


def test_tiny_model_matches_golden_reference_outputs():
    """Reference outputs stored by tools/make_golden.py; the weights go through the public loader."""
    golden = np.load(GOLDEN / "tiny_reference_outputs.npz")
    config = Mask2FormerConfig()
    for key, value in SIZES["tiny"]["model"].items():
        setattr(config.model, key, value)
    model = build_model(config)
    load_detectron2_checkpoint(model, str(GOLDEN / "tiny_detectron2.pkl"))
    ours = run_ours(model, golden["images"])
    names = [n for n in golden.files if n != "images"]
    assert len(names) == 28
    for name in names:
        np.testing.assert_allclose(ours[name], golden[name], rtol=0, atol=1e-4, err_msg=name)


@pytest.fixture(scope="module")
def tiny_model():
    """`tiny_config`'s model with seeded weights, shared by the tests below: they leave its weights as found."""
    keras.utils.set_random_seed(0)
    return build_model(tiny_config())


def test_output_contract_and_padding_to_multiple_of_32(tiny_model):
    config, model = tiny_config(), tiny_model
    images = np.random.default_rng(0).uniform(0, 255, (2, 70, 100, 3)).astype("float32")
    out = model(images)
    assert out["pred_logits"].shape == (2, 7, 6)
    assert out["pred_masks"].shape == (2, 7, 96 // 4, 128 // 4)  # 70x100 padded to 96x128
    assert len(out["aux_outputs"]) == 9
    assert all(set(a) == {"pred_logits", "pred_masks"} for a in out["aux_outputs"])
    # Padding with the pixel mean before the model equals the model's own zero padding after normalising.
    padded = np.empty((2, 96, 128, 3), "float32")
    padded[:] = np.array(config.model.pixel_mean, "float32")
    padded[:, :70, :100] = images
    np.testing.assert_allclose(model(padded)["pred_masks"], out["pred_masks"], atol=1e-5)


@pytest.mark.parametrize("size", ["tiny", pytest.param("r50", marks=pytest.mark.slow)])
def test_parameter_count_equals_reference(size):
    """Ours equals the reference built like it; the 80-class R50 is the official 44.0M (a full-size build:
    -m slow; the default suite checks the official R50 layout in tests/test_official_checkpoints.py)."""
    config = keras_config(size)
    model = build_model(config)
    frozen_stats = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights if "moving_" in w.path)
    parameters = model.count_params() - frozen_stats  # trainable + frozen BN affine, as HF counts
    pytest.importorskip("torch")
    from tests.hf_reference import build_hf

    reference = sum(p.numel() for p in build_hf(config).parameters())
    print(f"{size} parameters: ours {parameters:,}, reference {reference:,}")
    assert parameters == reference
    if size == "r50":
        assert round(parameters / 1e6, 1) == 44.0


def test_every_trainable_parameter_gets_a_gradient(tiny_model):
    model, initial = tiny_model, tiny_model.get_weights()
    # The official init zeroes the deformable-attention offset/weight kernels, which blocks the gradient
    # of the position path (level_embed) at step 0 only; perturb every weight to test the wiring.
    rng = np.random.default_rng(0)
    for w in model.trainable_weights:
        w.assign(w.numpy() + rng.normal(0, 0.02, w.shape).astype(w.dtype))
    images = tf.random.uniform((2, 64, 96, 3), 0, 255, seed=1)
    with tf.GradientTape() as tape:
        out = model(images, training=True)
        sets = [out] + out["aux_outputs"]
        loss = sum(
            tf.reduce_mean(tf.square(s["pred_logits"])) + tf.reduce_mean(tf.square(s["pred_masks"])) for s in sets
        )
    grads = tape.gradient(loss, model.trainable_weights)
    model.set_weights(initial)
    missing = [
        w.path for w, g in zip(model.trainable_weights, grads, strict=True) if g is None or not np.any(g.numpy())
    ]
    assert not missing, f"no gradient reaches: {missing}"
    frozen = [w.path for w in model.non_trainable_weights]
    assert frozen and all("backbone" in p for p in frozen)  # only the frozen batch norms are not trained


def test_saved_keras_model_round_trips(tmp_path, tiny_model):
    model = tiny_model
    images = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    a, b = model(images), restored(images)
    np.testing.assert_array_equal(a["pred_masks"], b["pred_masks"])
    np.testing.assert_array_equal(a["aux_outputs"][3]["pred_logits"], b["aux_outputs"][3]["pred_logits"])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_the_pixel_decoder_in_float32(policy, tiny_model):
    model, reference = build_model(tiny_config(), dtype=policy), tiny_model
    assert model.pixel_decoder.compute_dtype == "float32"
    assert model.backbone.compute_dtype == model.transformer_decoder.compute_dtype == policy.split("_")[1]
    model.set_weights(reference.get_weights())
    images = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    out, expected = model(images), reference(images)
    masks = keras.ops.convert_to_numpy(keras.ops.cast(out["pred_masks"], "float32"))
    assert np.isfinite(masks).all()
    # Later sets can differ a lot where a low-precision logit flips an attention-mask bit; the first
    # prediction (raw queries, before any masked attention) only carries the rounding of the backbone.
    first = keras.ops.convert_to_numpy(keras.ops.cast(out["aux_outputs"][0]["pred_masks"], "float32"))
    first_fp32 = expected["aux_outputs"][0]["pred_masks"].numpy()
    assert np.abs(first - first_fp32).max() < 0.05 * np.abs(first_fp32).max()

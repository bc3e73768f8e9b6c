"""Same weights in, same numbers out: our model against the reference implementation.

The reference is Hugging Face `Mask2FormerForUniversalSegmentation` with random weights, whose
weights are written as a detectron2 pickle (official names) and loaded through our public loader.
Skips cleanly without torch.
  - ResNet (non-trivial batch-norm statistics), input 2 x 160 x 224 (non-square): the tiny model of
    tests/helpers.py (every architectural feature, 10 prediction sets) in the default suite, the full
    R50 (80 classes; a minute or more per dtype on 2 cores) with -m slow.
  - Swin (HF `SwinBackbone`, which always partitions: `always_partition=True`, as the official D2
    Swin): the official Swin-T and a small Swin-L-shaped model (window 12), input 2 x 160 x 256, so
    that no stage is a multiple of the window and res5 (5 x 8) is smaller than it. The checkpoint
    also carries noise in the fixed `relative_position_index` buffers, which must not be loaded.

In float32 a mask logit within rounding error of 0 can fall on either side of the sigmoid-0.5
threshold (Swin-T: one logit, -4.3e-7 in the reference on 2 threads, +1.5e-7 on 1 thread, -6e-8 in ours,
which float32 sigmoid rounds to exactly 0.5), and the flipped attention-mask bit moves every later layer
by up to 3e-3. So the reference attends with our attention masks, and the test checks that every bit
where its own mask (from its own logits, as its forward pass computes it) differs from ours is such a
logit: |logit| <= FLIP_LOGIT on both sides, and no bit at all in float64. Every output is then compared.
(HF's Swin computes its attention softmax in float32 even in a float64 model, hence float64 agreement
near 1e-8, not 1e-12.)
"""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.hf_reference import compare, keras_config  # noqa: E402

TOLERANCE = {"float32": 1e-4, "float64": 1e-6}
SWIN_IMAGES = (2, 160, 256)
FLIP_LOGIT = 1e-5  # a float32 flip sits within the logits' parity (~7e-6) of 0


def _check(size, dtype, image_shape, tolerance):
    rows, flips = compare(size, dtype, image_shape=image_shape)
    names = [name for name, *_ in rows]
    sets = keras_config(size).model.num_decoder_layers + 1
    assert len(names) == 4 + 3 + 1 + 2 * sets, names  # backbone, multi-scale, mask features, predictions
    counts = [len(bits) for bits in flips]
    if dtype == "float64":
        assert not any(counts), f"float64 flipped attention-mask bits per layer: {counts}"
    if any(counts):
        largest = float(np.abs(np.concatenate(flips)).max())
        print(f"{size} {dtype}: attention-mask bits flipped per layer {counts}, largest |logit| {largest:.1e}")
        assert largest <= FLIP_LOGIT, f"attention masks differ away from the threshold: {counts}, |logit| {largest}"
    print(f"{size} {dtype}: max difference {max(diff for _, _, diff, _ in rows):.2e} over {len(rows)} outputs")
    failures = [f"{name} {shape}: {diff:.2e}" for name, shape, diff, _ in rows if not diff <= tolerance]
    assert not failures, f"{dtype} outputs differ from the reference by more than {tolerance}: {failures}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiny_resnet_matches_reference(dtype):
    _check("tiny", dtype, (2, 160, 224), TOLERANCE[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_r50_matches_reference(dtype):
    _check("r50", dtype, (2, 160, 224), 1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_small_swin_l_shaped_window_12_matches_reference(dtype):
    _check("swin_l_small", dtype, SWIN_IMAGES, TOLERANCE[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_swin_t_matches_reference(dtype):
    _check("swin_t", dtype, SWIN_IMAGES, TOLERANCE[dtype])

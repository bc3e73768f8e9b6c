"""Point sampling equals torch's grid_sample (align_corners=False, zero padding); importance sampling."""

import numpy as np
import pytest
import tensorflow as tf

from losses.point_sampling import importance_sample_points, sample_points_per_row, sample_shared_points


def torch_point_sample(maps, coords):
    """detectron2's point_sample: maps (N, H, W), coords (N, P, 2) -> (N, P)."""
    torch = pytest.importorskip("torch")
    grid = 2.0 * torch.from_numpy(coords)[:, :, None] - 1.0
    out = torch.nn.functional.grid_sample(torch.from_numpy(maps)[:, None], grid, align_corners=False)
    return out[:, 0, :, 0].numpy()


def random_coords(rng, shape):
    coords = rng.uniform(size=shape + (2,)).astype(np.float32)
    coords.reshape(-1, 2)[:4] = [[0, 0], [1, 1], [0, 1], [0.999, 0.001]]  # borders read zero padding
    return coords


def test_shared_and_per_row_sampling_equal_grid_sample():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 3, 7, 5)).astype(np.float32)
    shared = random_coords(rng, (2, 50))
    expected = torch_point_sample(maps.reshape(6, 7, 5), np.repeat(shared, 3, axis=0)).reshape(2, 3, 50)
    np.testing.assert_allclose(sample_shared_points(tf.constant(maps), tf.constant(shared)), expected, atol=1e-6)

    rows = np.array([[2, 0, 2, 1], [1, 1, 0, 2]], np.int32)
    per_row = random_coords(rng, (2, 4, 30))
    selected = np.stack([maps[b, rows[b]] for b in range(2)]).reshape(8, 7, 5)
    expected = torch_point_sample(selected, per_row.reshape(8, 30, 2)).reshape(2, 4, 30)
    actual = sample_points_per_row(tf.constant(maps), tf.constant(rows), tf.constant(per_row))
    np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_per_row_sampling_gradient_equals_grid_sample_backward():
    """The gradient reaches the maps directly (not through the corner table), as torch's backward computes it."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    maps = rng.normal(size=(2, 3, 7, 5)).astype(np.float32)
    rows = np.array([[2, 0, 2], [1, 1, 0]], np.int32)
    coords = random_coords(rng, (2, 3, 40))
    upstream = rng.normal(size=(2, 3, 40)).astype(np.float32)
    source = tf.constant(maps)
    with tf.GradientTape() as tape:
        tape.watch(source)
        loss = tf.reduce_sum(sample_points_per_row(source, tf.constant(rows), tf.constant(coords)) * upstream)
    ours = tape.gradient(loss, source).numpy()
    reference = torch.from_numpy(maps).requires_grad_()
    selected = torch.stack([reference[b, torch.from_numpy(rows[b]).long()] for b in range(2)]).reshape(6, 1, 7, 5)
    grid = 2.0 * torch.from_numpy(coords).reshape(6, 40, 1, 2) - 1.0
    sampled = torch.nn.functional.grid_sample(selected, grid, align_corners=False)[:, 0, :, 0]
    (sampled * torch.from_numpy(upstream).reshape(6, 40)).sum().backward()
    np.testing.assert_allclose(ours, reference.grad.numpy(), atol=1e-5)
    assert np.any(ours[:, :, 0, 0]) and not np.any(ours[0, 1])  # border pixels get their share; map 1 is unread


@pytest.mark.parametrize("dtype", [np.uint8, bool], ids=["uint8", "bool"])
def test_canvas_equals_zero_padding_and_masks_equal_float(dtype):
    """Odd sizes (3 * 30 * 27 pixels is no multiple of 4) exercise the word-wise reading of 8-bit masks."""
    rng = np.random.default_rng(1)
    masks = (rng.uniform(size=(2, 3, 30, 27)) > 0.5).astype(dtype)
    padded = np.pad(masks, [(0, 0), (0, 0), (0, 2), (0, 5)]).astype(np.float32)
    coords = random_coords(rng, (2, 200))
    on_canvas = sample_shared_points(tf.constant(masks), tf.constant(coords), canvas=(32, 32))
    rows = tf.constant([[2, 0], [1, 1]], tf.int32)
    per_row = tf.constant(random_coords(rng, (2, 2, 50)))
    np.testing.assert_allclose(
        sample_points_per_row(tf.constant(masks), rows, per_row),
        sample_points_per_row(tf.constant(masks.astype(np.float32)), rows, per_row),
        atol=1e-6,
    )
    np.testing.assert_allclose(on_canvas, sample_shared_points(tf.constant(padded), tf.constant(coords)), atol=1e-6)
    expected = torch_point_sample(padded.reshape(6, 32, 32), np.repeat(coords, 3, axis=0)).reshape(2, 3, 200)
    np.testing.assert_allclose(on_canvas, expected, atol=1e-6)


def test_importance_sampling_keeps_the_most_uncertain_points():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(1, 2, 6, 6)).astype(np.float32)
    rows = np.array([[1, 0]], np.int32)
    oversampled = rng.uniform(size=(1, 2, 60, 2)).astype(np.float32)
    fresh = rng.uniform(size=(1, 2, 5, 2)).astype(np.float32)
    coords = importance_sample_points(*map(tf.constant, (logits, rows, oversampled, fresh)), 20, 15, "fresh").numpy()
    assert coords.shape == (1, 2, 20, 2)
    uncertainty = -np.abs(sample_points_per_row(tf.constant(logits), tf.constant(rows), tf.constant(oversampled)))
    for r in range(2):
        most_uncertain = oversampled[0, r, np.argsort(-uncertainty[0, r])[:15]]
        assert {tuple(c) for c in coords[0, r, :15]} == {tuple(c) for c in most_uncertain}
        np.testing.assert_array_equal(coords[0, r, 15:], fresh[0, r])


def test_oversampled_option_takes_the_random_points_from_the_rest():
    """The 'oversampled' option: the random share is a random subset of the candidates not kept."""
    rng = np.random.default_rng(3)
    logits = tf.constant(rng.normal(size=(1, 1, 6, 6)).astype(np.float32))
    rows = tf.zeros([1, 1], tf.int32)
    oversampled = rng.uniform(size=(1, 1, 60, 2)).astype(np.float32)
    picks = []
    for seed in range(2):
        keys = tf.constant(np.random.default_rng(seed).uniform(size=(1, 1, 45)).astype(np.float32))
        coords = importance_sample_points(logits, rows, tf.constant(oversampled), keys, 20, 15, "oversampled")
        coords = [tuple(c) for c in coords.numpy()[0, 0]]
        kept, extra = set(coords[:15]), coords[15:]
        candidates = {tuple(c) for c in oversampled[0, 0]}
        assert len(set(extra)) == 5 and set(extra) <= candidates - kept
        picks.append(set(extra))
    assert picks[0] != picks[1]

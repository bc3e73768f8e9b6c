"""SetCriterion against transformers' Mask2FormerLoss (torch CPU) with the same random points.

The reference draws its points with `torch.rand`; the test replaces those draws by the points given
to our criterion, in the order the reference consumes them (per prediction set: one (1, P, 2) draw per
image for matching, then the oversampled and the random points of all matched pairs, image by image,
in query order).
"""

import numpy as np
import pytest
import tensorflow as tf

from config import Mask2FormerConfig
from losses import HungarianMatcher, SetCriterion, build_criterion
from losses.criterion import SetPoints

NUM_CLASSES, NUM_QUERIES, NUM_SLOTS, NUM_POINTS, MASK_SIZE = 5, 12, 8, 40, 8
NUM_SETS = 10  # final + 9 auxiliary


def make_problem(instances_per_image, target_size=(32, 32), seed=0):
    """Random predictions (10 sets) and padded targets; valid slots scattered over the M slots."""
    rng = np.random.default_rng(seed)
    batch = len(instances_per_image)
    sets = [
        {
            "pred_logits": rng.normal(size=(batch, NUM_QUERIES, NUM_CLASSES + 1)).astype(np.float32),
            "pred_masks": (3 * rng.normal(size=(batch, NUM_QUERIES, MASK_SIZE, MASK_SIZE))).astype(np.float32),
        }
        for _ in range(NUM_SETS)
    ]
    height, width = target_size
    masks = np.zeros((batch, NUM_SLOTS, height, width), np.uint8)
    labels = np.full((batch, NUM_SLOTS), -1, np.int32)
    valid = np.zeros((batch, NUM_SLOTS), bool)
    yy, xx = np.mgrid[:height, :width]
    for b, count in enumerate(instances_per_image):
        for slot in rng.permutation(NUM_SLOTS)[:count]:
            cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(2, 12)
            masks[b, slot] = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            labels[b, slot] = rng.integers(0, NUM_CLASSES)
            valid[b, slot] = True
    outputs = dict(sets[0], aux_outputs=sets[1:])
    return outputs, {"masks": masks, "labels": labels, "valid": valid}


def make_points(criterion, batch, seed=1):
    rows = min(NUM_QUERIES, NUM_SLOTS)
    return [
        SetPoints(*(np.asarray(t) for t in p))
        for p in criterion.draw_points(tf.constant([seed, 0]), batch, rows, NUM_SETS)
    ]


def make_criterion(backend="tf"):
    return SetCriterion(NUM_CLASSES, HungarianMatcher(backend=backend), num_points=NUM_POINTS)


def to_tf(outputs, targets):
    return tf.nest.map_structure(tf.constant, outputs), tf.nest.map_structure(tf.constant, targets)


def reference_losses(outputs, targets, points, monkeypatch, canvas=(32, 32)):
    """transformers' Mask2FormerLoss on the same inputs, its torch.rand draws replaced by `points`."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("scipy")
    from transformers import Mask2FormerConfig as HFConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    hf_config = HFConfig(num_labels=NUM_CLASSES, train_num_points=NUM_POINTS, backbone_config=None)
    weights = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    loss = Mask2FormerLoss(hf_config, weights)

    valid = targets["valid"]
    matched = [min(NUM_QUERIES, int(v.sum())) for v in valid]
    draws = []
    for p in points:
        draws += [torch.from_numpy(p.match[b][None]) for b in range(len(valid))]
        draws.append(torch.from_numpy(np.concatenate([p.oversampled[b, :n] for b, n in enumerate(matched)])))
        draws.append(torch.from_numpy(np.concatenate([p.random[b, :n] for b, n in enumerate(matched)])))

    def fake_rand(*size, **kwargs):
        draw = draws.pop(0)
        assert tuple(draw.shape) == tuple(size), (draw.shape, size)
        return draw.clone()

    monkeypatch.setattr(torch, "rand", fake_rand)
    height, width = targets["masks"].shape[2:]
    pad = [(0, 0), (0, canvas[0] - height), (0, canvas[1] - width)]
    mask_labels = [torch.from_numpy(np.pad(m[v], pad).astype(np.float32)) for m, v in zip(targets["masks"], valid)]
    class_labels = [torch.from_numpy(lab[v].astype(np.int64)) for lab, v in zip(targets["labels"], valid)]
    aux = [
        {
            "masks_queries_logits": torch.from_numpy(s["pred_masks"]),
            "class_queries_logits": torch.from_numpy(s["pred_logits"]),
        }
        for s in outputs["aux_outputs"]
    ]
    with torch.no_grad():
        result = loss(
            torch.from_numpy(outputs["pred_masks"]),
            torch.from_numpy(outputs["pred_logits"]),
            mask_labels,
            class_labels,
            auxiliary_predictions=aux,
        )
    assert not draws, "the reference drew fewer points than given"
    return {k.replace("loss_cross_entropy", "loss_ce"): float(v) for k, v in result.items()}


def assert_equal_to_reference(ours, reference):
    assert set(ours) == set(reference) | {"loss_total"}
    for key, value in reference.items():
        np.testing.assert_allclose(float(ours[key]), value, rtol=1e-5, err_msg=key)
    total = sum(
        2 * reference[f"loss_ce{s}"] + 5 * reference[f"loss_mask{s}"] + 5 * reference[f"loss_dice{s}"]
        for s in [""] + [f"_{i}" for i in range(NUM_SETS - 1)]
    )
    np.testing.assert_allclose(float(ours["loss_total"]), total, rtol=1e-5)


@pytest.mark.parametrize("target_size", [(32, 32), (30, 27)], ids=["unpadded", "padded-canvas"])
def test_every_term_equals_transformers(monkeypatch, target_size):
    outputs, targets = make_problem([3, 5], target_size=target_size)
    criterion = make_criterion("tf")
    points = make_points(criterion, batch=2)
    ours = criterion(*to_tf(outputs, targets), points=[SetPoints(*map(tf.constant, p)) for p in points])
    assert_equal_to_reference(ours, reference_losses(outputs, targets, points, monkeypatch))

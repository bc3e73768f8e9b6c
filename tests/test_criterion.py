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


def make_problem(instances_per_image, target_size=(32, 32), seed=0, num_slots=NUM_SLOTS):
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
    masks = np.zeros((batch, num_slots, height, width), np.uint8)
    labels = np.full((batch, num_slots), -1, np.int32)
    valid = np.zeros((batch, num_slots), bool)
    yy, xx = np.mgrid[:height, :width]
    for b, count in enumerate(instances_per_image):
        for slot in rng.permutation(num_slots)[:count]:
            cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(2, 12)
            masks[b, slot] = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            labels[b, slot] = rng.integers(0, NUM_CLASSES)
            valid[b, slot] = True
    outputs = dict(sets[0], aux_outputs=sets[1:])
    return outputs, {"masks": masks, "labels": labels, "valid": valid}


def image_seeds(seed, batch):
    """(batch, 2) int32 per-image seeds."""
    return np.stack([[seed, b] for b in range(batch)]).astype(np.int32)


def make_points(criterion, batch, seed=1, num_slots=NUM_SLOTS):
    rows = min(NUM_QUERIES, num_slots)
    drawn = criterion.materialize(criterion.draw_points(image_seeds(seed, batch), NUM_SETS), rows)
    return [SetPoints(*(np.asarray(t) for t in p)) for p in drawn]


def make_criterion(backend="device"):
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
    mask_labels = [
        torch.from_numpy(np.pad(m[v], pad).astype(np.float32)) for m, v in zip(targets["masks"], valid, strict=True)
    ]
    class_labels = [torch.from_numpy(lab[v].astype(np.int64)) for lab, v in zip(targets["labels"], valid, strict=True)]
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
    worst = max(abs(float(ours[k]) - v) / max(abs(v), 1e-12) for k, v in reference.items())
    print(f"criterion vs transformers: worst relative error over {len(reference)} terms {worst:.1e}")
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
    criterion = make_criterion("device")
    points = make_points(criterion, batch=2)
    ours = criterion(*to_tf(outputs, targets), points=[SetPoints(*map(tf.constant, p)) for p in points])
    assert_equal_to_reference(ours, reference_losses(outputs, targets, points, monkeypatch))


def test_batch_of_0_1_and_7_instances_equals_transformers(monkeypatch):
    """Normalised by the total number of masks in the batch (8), not per image."""
    outputs, targets = make_problem([0, 1, 7], seed=3)
    criterion = make_criterion("scipy")
    points = make_points(criterion, batch=3, seed=4)
    ours = criterion(*to_tf(outputs, targets), points=[SetPoints(*map(tf.constant, p)) for p in points])
    assert_equal_to_reference(ours, reference_losses(outputs, targets, points, monkeypatch))


def test_more_targets_than_queries_equals_transformers(monkeypatch):
    """14 targets for 12 queries: only 12 are matched (the transposed assignment problem)."""
    outputs, targets = make_problem([14, 3], seed=12, num_slots=16)
    criterion = make_criterion("device")
    points = make_points(criterion, batch=2, seed=13, num_slots=16)
    ours = criterion(*to_tf(outputs, targets), points=[SetPoints(*map(tf.constant, p)) for p in points])
    assert_equal_to_reference(ours, reference_losses(outputs, targets, points, monkeypatch))


def test_per_image_seeds_draw_the_materialized_rows_of_the_matched_pairs():
    """Drawing only the matched pairs' rows from per-image seeds gives the losses of all rows drawn up front,
    on the dynamic and the static (XLA) path."""
    outputs, targets = to_tf(*make_problem([2, 6], seed=14))
    for dynamic_pairs in (True, False):
        criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(), num_points=NUM_POINTS, dynamic_pairs=dynamic_pairs)
        lazy = criterion.draw_points(image_seeds(8, 2), NUM_SETS)
        assert lazy[0].oversampled.shape == (2, 2) and lazy[0].match.shape == (2, NUM_POINTS, 2)
        drawn = criterion.materialize(lazy, NUM_SLOTS)
        assert drawn[0].oversampled.shape == (2, NUM_SLOTS, 3 * NUM_POINTS, 2)
        from_seeds, from_draws = criterion(outputs, targets, points=lazy), criterion(outputs, targets, points=drawn)
        for key, value in from_draws.items():
            assert float(from_seeds[key]) == float(value), key


def test_no_instances_at_all():
    """Finite; no mask or dice loss; the class loss drives every query towards no-object."""
    outputs, targets = to_tf(*make_problem([0, 0], seed=5))
    criterion = make_criterion("device")
    logits = [outputs["pred_logits"]] + [a["pred_logits"] for a in outputs["aux_outputs"]]
    with tf.GradientTape() as tape:
        tape.watch(logits)
        losses = criterion(outputs, targets, seed=image_seeds(1, 2))
    assert all(np.isfinite(float(v)) for v in losses.values())
    for suffix in [""] + [f"_{i}" for i in range(NUM_SETS - 1)]:
        assert float(losses[f"loss_mask{suffix}"]) == 0.0 and float(losses[f"loss_dice{suffix}"]) == 0.0
    no_object_nll = -tf.nn.log_softmax(outputs["pred_logits"])[..., NUM_CLASSES]
    np.testing.assert_allclose(float(losses["loss_ce"]), float(tf.reduce_mean(no_object_nll)), rtol=1e-6)
    for grad in tape.gradient(losses["loss_total"], logits):
        grad = grad.numpy()
        assert np.all(grad[..., NUM_CLASSES] < 0) and np.all(grad[..., :NUM_CLASSES] > 0)


def test_zero_area_masks_give_no_nan():
    outputs, targets = make_problem([2, 4], seed=6)
    targets["masks"][:] = 0  # valid targets whose masks are empty
    outputs, targets = to_tf(outputs, targets)
    masks = [outputs["pred_masks"]] + [a["pred_masks"] for a in outputs["aux_outputs"]]
    with tf.GradientTape() as tape:
        tape.watch(masks)
        losses = make_criterion("device")(outputs, targets, seed=image_seeds(3, 2))
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert float(losses["loss_dice"]) > 0
    assert all(np.all(np.isfinite(g.numpy())) for g in tape.gradient(losses["loss_total"], masks))


def test_traces_once_and_compiles_with_xla():
    """One trace for different instance counts; jit_compile=True with the device matcher (static pairs) gives
    the eager values.

    Two prediction sets keep the XLA compile short; points are passed because TF's stateless random
    numbers differ between XLA and the regular kernels.
    """
    criterion = make_criterion("device")
    static = SetCriterion(NUM_CLASSES, HungarianMatcher(backend="device"), num_points=NUM_POINTS, dynamic_pairs=False)
    loss_fn = tf.function(lambda o, t, p: criterion(o, t, points=p))
    xla_fn = tf.function(lambda o, t, p: static(o, t, points=p), jit_compile=True)
    for counts in ([2, 5], [0, 8]):
        outputs, targets = make_problem(counts, seed=sum(counts))
        outputs["aux_outputs"] = outputs["aux_outputs"][:1]
        outputs, targets = to_tf(outputs, targets)
        points = [SetPoints(*map(tf.constant, p)) for p in make_points(criterion, batch=2)[:2]]
        eager = criterion(outputs, targets, points=points)
        for fn in (loss_fn, xla_fn):
            compiled = fn(outputs, targets, points)
            for key, value in eager.items():
                np.testing.assert_allclose(float(compiled[key]), float(value), rtol=1e-5, err_msg=key)
    assert loss_fn.experimental_get_tracing_count() == 1
    assert xla_fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("backend", ["scipy", "device"])
def test_one_trace_with_the_slot_count_open_serves_every_bucket(backend):
    """A graph traced with M unknown (what `TrainStep` traces) gives the eager losses for targets padded
    to 8 and to 16 slots; padding more empty slots changes no loss."""
    outputs, targets = to_tf(*make_problem([3, 6], seed=21))
    criterion, seed = make_criterion(backend), image_seeds(2, 2)
    open_slots = {key: tf.TensorSpec([2, None, *value.shape[2:]], value.dtype) for key, value in targets.items()}
    loss_fn = tf.function(lambda t: criterion(outputs, t, seed=seed))
    loss_fn.get_concrete_function(open_slots)
    eager = criterion(outputs, targets, seed=seed)
    padded = {
        key: tf.pad(value, [[0, 0], [0, 8]] + [[0, 0]] * (value.shape.rank - 2)) for key, value in targets.items()
    }
    for bucket in (targets, padded):
        traced = loss_fn(bucket)
        for key, value in eager.items():
            np.testing.assert_allclose(float(traced[key]), float(value), rtol=1e-5, err_msg=key)
    assert loss_fn.experimental_get_tracing_count() == 1


def test_backends_agree_and_seed_controls_draws():
    outputs, targets = to_tf(*make_problem([3, 6], seed=9))
    seed = image_seeds(5, 2)
    by_tf = make_criterion("device")(outputs, targets, seed=seed)
    by_scipy = make_criterion("scipy")(outputs, targets, seed=seed)
    for key in by_tf:
        np.testing.assert_allclose(float(by_tf[key]), float(by_scipy[key]), rtol=1e-6, err_msg=key)
    other = make_criterion("device")(outputs, targets, seed=image_seeds(6, 2))
    assert float(other["loss_mask"]) != float(by_tf["loss_mask"])
    from_rest = SetCriterion(NUM_CLASSES, HungarianMatcher(), num_points=NUM_POINTS, random_points="oversampled")
    from_rest = from_rest(outputs, targets, seed=seed)
    assert float(from_rest["loss_ce"]) == pytest.approx(float(by_tf["loss_ce"]), rel=1e-6)  # same matching
    assert np.isfinite(float(from_rest["loss_total"])) and float(from_rest["loss_mask"]) != float(by_tf["loss_mask"])


def test_micro_batches_with_global_normalizers_sum_to_the_full_batch():
    """Gradient accumulation: losses and gradients of 2 micro-batches (1 + 2 images) add up to one batch."""
    outputs, targets = make_problem([0, 3, 7], seed=10)
    criterion = make_criterion("device")
    points = make_points(criterion, batch=3, seed=11)
    step = criterion.local_normalizers(tf.constant(targets["valid"]), NUM_QUERIES)

    def run(images):
        part = lambda x: tf.constant(x[images])  # noqa: E731
        o = {"pred_logits": part(outputs["pred_logits"]), "pred_masks": part(outputs["pred_masks"])}
        o["aux_outputs"] = [{k: part(v) for k, v in a.items()} for a in outputs["aux_outputs"]]
        t = {k: part(v) for k, v in targets.items()}
        p = [SetPoints(*(part(x) for x in s)) for s in points]
        variables = [o["pred_logits"], o["pred_masks"]]
        with tf.GradientTape() as tape:
            tape.watch(variables)
            losses = criterion(o, t, points=p, num_masks=step["num_masks"], class_weight_sum=step["class_weight_sum"])
        return losses, [g.numpy() for g in tape.gradient(losses["loss_total"], variables)]

    full, full_grads = run(slice(0, 3))
    first, first_grads = run(slice(0, 1))
    second, second_grads = run(slice(1, 3))
    for key in full:
        np.testing.assert_allclose(float(first[key]) + float(second[key]), float(full[key]), rtol=1e-5, err_msg=key)
    for g_full, g_first, g_second in zip(full_grads, first_grads, second_grads, strict=True):
        np.testing.assert_allclose(np.concatenate([g_first, g_second]), g_full, rtol=1e-5, atol=1e-9)
    # The defaults are the reference's per-batch normalisers.
    default = criterion(*to_tf(outputs, targets), points=[SetPoints(*map(tf.constant, p)) for p in points])
    np.testing.assert_allclose(float(default["loss_total"]), float(full["loss_total"]), rtol=1e-6)


def test_build_criterion_reads_the_config():
    config = Mask2FormerConfig()
    config.model.num_classes = 7
    config.loss.num_points = 99
    config.loss.matcher = "device"
    config.loss.no_object_weight = 0.2
    config.loss.random_points = "oversampled"
    criterion = build_criterion(config.validate())
    assert criterion.num_classes == 7 and criterion.num_points == 99 and criterion.no_object_weight == 0.2
    assert criterion.random_points == "oversampled"
    assert criterion.matcher.backend == "device" and criterion.matcher.cost_dice == config.loss.dice_weight
    with pytest.raises(ValueError, match="num_classes"):
        outputs, targets = to_tf(*make_problem([1, 1]))
        criterion(outputs, targets)

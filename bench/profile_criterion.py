"""Where the criterion's time goes, stage by stage, ours and the reference profiled the same way.

    python bench/profile_criterion.py               # 2 x 512x512, 5 and 10 instances, 10 sets, 12,544 points

Each stage runs alone (ours: its own `tf.function`; reference: the same torch calls `Mask2FormerLoss`
makes), 10 times as for 10 prediction sets, median of 3 after one warm-up, 2 threads each. Stages:
matching costs (reading the predictions and targets at the shared points, pairwise costs),
assignment, importance sampling (uncertainty reads, top-k), point reads, and the whole forward and
forward + backward. Inputs as in `bench_criterion.py`.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
from bench_criterion import make_predictions, make_targets, reference_criterion  # noqa: E402
from harness import machine, median_seconds, set_threads  # noqa: E402  (sets OMP_WAIT_POLICY before torch)

SETS, POINTS = 10, 12544


def profile_ours(predictions, targets) -> dict[str, float]:
    import tensorflow as tf

    from config import Mask2FormerConfig
    from losses import build_criterion
    from losses.matcher import pairwise_costs
    from losses.point_sampling import importance_sample_points, map_major, pixel_major, read_rows, read_shared

    criterion = build_criterion(Mask2FormerConfig())
    masks, labels, valid = (tf.constant(targets[k]) for k in ("masks", "labels", "valid"))
    logits = [tf.constant(p["pred_logits"]) for p in predictions]
    preds = [tf.constant(p["pred_masks"]) for p in predictions]
    points = criterion.draw_points(tf.constant([1, 2]), valid.shape[0], SETS)
    target_pixels = pixel_major(masks)
    shared = [read_shared(pixel_major(p), q.match) for p, q in zip(preds, points, strict=True)]
    target_points = [read_shared(target_pixels, q.match) for q in points]
    costs = tf.concat(
        [
            criterion.matcher.cost_matrix(lg, p, labels, target_pixels, q.match)
            for lg, p, q in zip(logits, preds, points, strict=True)
        ],
        0,
    )
    counts = targets["valid"].sum(1)  # the matched pairs: as many as targets (fewer than queries)
    pairs = np.concatenate([predictions[0]["pred_masks"][b, :n] for b, n in enumerate(counts)])[None]
    pair_maps, rows = map_major(tf.constant(pairs)), tf.range(pairs.shape[1])[None]
    oversampled = tf.random.uniform([1, pairs.shape[1], criterion.num_oversampled, 2])
    fresh = tf.random.uniform([1, pairs.shape[1], POINTS - criterion.num_uncertain, 2])
    uncertainty = -tf.abs(read_rows(pair_maps, rows, oversampled))
    coords = importance_sample_points(pair_maps, rows, oversampled, fresh, POINTS, criterion.num_uncertain)
    target_maps = map_major(tf.reshape(masks, [1, -1, *masks.shape[2:]]))
    target_rows = tf.constant([[b * valid.shape[1] + m for b, n in enumerate(counts) for m in range(n)]])
    variables = [tf.Variable(p[k]) for p in predictions for k in ("pred_logits", "pred_masks")]

    def loss():
        sets = [{"pred_logits": variables[2 * i], "pred_masks": variables[2 * i + 1]} for i in range(SETS)]
        outputs = dict(sets[-1], aux_outputs=sets[:-1])
        return criterion(outputs, {"masks": masks, "labels": labels, "valid": valid}, seed=tf.constant([3, 4]))

    def forward_backward():
        with tf.GradientTape() as tape:
            total = loss()["loss_total"]
        return tape.gradient(total, variables)

    stages = {
        "match: pixel-major transposes of the predictions": lambda: [pixel_major(p).data for p in preds],
        "match: predictions at the shared points (incl. transposes)": lambda: [
            read_shared(pixel_major(p), q.match) for p, q in zip(preds, points, strict=True)
        ],
        "match: targets at the shared points": lambda: [read_shared(target_pixels, q.match) for q in points],
        "match: pairwise BCE and dice costs": lambda: [
            pairwise_costs(p, t) for p, t in zip(shared, target_points, strict=True)
        ],
        "match: cost matrices, total": lambda: [
            criterion.matcher.cost_matrix(lg, p, labels, target_pixels, q.match)
            for lg, p, q in zip(logits, preds, points, strict=True)
        ],
        "assignment (scipy), all sets": lambda: criterion.matcher.assign(costs, tf.tile(valid, [SETS, 1])),
        "importance: uncertainty reads": lambda: [read_rows(pair_maps, rows, oversampled) for _ in range(SETS)],
        "importance: top-k": lambda: [
            tf.math.top_k(uncertainty + i, criterion.num_uncertain, sorted=False)[1] for i in range(SETS)
        ],
        "importance: total": lambda: [
            importance_sample_points(pair_maps, rows, oversampled, fresh, POINTS, criterion.num_uncertain)
            for _ in range(SETS)
        ],
        "point reads: predictions": lambda: [read_rows(pair_maps, rows, coords) for _ in range(SETS)],
        "point reads: targets (uint8)": lambda: [read_rows(target_maps, target_rows, coords) for _ in range(SETS)],
        "whole criterion: forward": lambda: loss()["loss_total"],
        "whole criterion: forward + backward": forward_backward,
    }
    return {name: median_seconds(tf.function(fn), 3) for name, fn in stages.items()}


def profile_reference(predictions, targets) -> dict[str, float]:
    import torch
    from transformers.models.mask2former.modeling_mask2former import sample_point

    loss, tensors, mask_labels, class_labels, total = reference_criterion(predictions, targets, POINTS)
    with torch.no_grad():
        indices = loss.matcher(tensors[0]["pred_masks"], tensors[0]["pred_logits"], mask_labels, class_labels)
        pairs = tensors[0]["pred_masks"][loss._get_predictions_permutation_indices(indices)][:, None]
        padded, _ = loss._pad_images_to_max_in_batch(mask_labels)
        pair_targets = padded[loss._get_targets_permutation_indices(indices)][:, None]
    num_oversampled, num_uncertain = int(3 * POINTS), int(0.75 * POINTS)
    candidates = torch.rand(len(pairs), num_oversampled, 2)
    uncertainty = torch.randn(len(pairs), num_oversampled)
    coords = torch.rand(len(pairs), POINTS, 2)

    def whole(backward):
        result = total()
        if backward:
            result.backward()

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()

        return run

    stages = {
        "match: matcher (grid_sample, costs, scipy)": no_grad(
            lambda: [loss.matcher(t["pred_masks"], t["pred_logits"], mask_labels, class_labels) for t in tensors]
        ),
        "importance: uncertainty reads": no_grad(
            lambda: [sample_point(pairs, candidates, align_corners=False) for _ in range(SETS)]
        ),
        "importance: top-k": no_grad(lambda: [torch.topk(uncertainty, num_uncertain, dim=1) for _ in range(SETS)]),
        "importance: total": no_grad(
            lambda: [
                loss.sample_points_using_uncertainty(pairs, loss.calculate_uncertainty, POINTS, 3.0, 0.75)
                for _ in range(SETS)
            ]
        ),
        "point reads: predictions": no_grad(
            lambda: [sample_point(pairs, coords, align_corners=False) for _ in range(SETS)]
        ),
        "point reads: targets (float32)": no_grad(
            lambda: [sample_point(pair_targets, coords, align_corners=False) for _ in range(SETS)]
        ),
        "whole criterion: forward": lambda: whole(False),
        "whole criterion: forward + backward": lambda: whole(True),
    }
    return {name: median_seconds(fn, 3) for name, fn in stages.items()}


def main():
    set_threads()
    rng = np.random.default_rng(0)
    targets = make_targets(rng, [5, 10], 512)
    predictions = make_predictions(rng, 2, 100, 512, SETS)
    for side, result in (
        ("ours", profile_ours(predictions, targets)),
        ("reference", profile_reference(predictions, targets)),
    ):
        for name, seconds in result.items():
            print(f"{side:9s}  {name:60s} {1000 * seconds:8.0f} ms", flush=True)
    print(f"machine: {machine()}; 2 threads each; stages x{SETS} (one per prediction set), medians of 3")


if __name__ == "__main__":
    main()

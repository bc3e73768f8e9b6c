"""The criterion alone (matching + losses, forward and backward) against transformers' Mask2FormerLoss.

    python -m bench.bench_criterion                 # 2 x 512x512, 5 and 10 instances, 100 queries, 80 classes
    python -m bench.bench_criterion --memory        # also the peak resident memory of each, fresh processes

Same inputs for both: random predictions of 10 prediction sets (B, 100, 81) and (B, 100, 128, 128) and
disc-shaped targets at the input resolution. Ours gets the targets as the training pipeline gives them
(padded to the batch's bucket of real instances, uint8) and runs under `tf.function`; the reference
gets the list of real masks (float32) and runs eagerly, as `Mask2FormerForUniversalSegmentation` calls
it. Both compute the gradient with respect to all predictions. Interleaved ours / reference, medians
after warm-up, 2 threads each, torch with OMP_WAIT_POLICY=PASSIVE (set before torch is imported).
"""

from __future__ import annotations

import argparse

import numpy as np  # noqa: E402

from bench.harness import add_common_arguments, run_main  # noqa: E402  (sets OMP_WAIT_POLICY before torch)


def bucket(count: int, max_instances: int) -> int:
    """The pipeline's slot count for a batch whose largest image has `count` instances."""
    from data.pipeline import instance_bucket

    return instance_bucket(count, max_instances)


def make_targets(rng, counts, size, max_instances=128):
    """Disc masks: padded uint8 (B, M, H, W) + labels + valid for ours, lists of real ones for the reference."""
    slots = bucket(max(counts), max_instances)
    masks = np.zeros((len(counts), slots, size, size), np.uint8)
    labels = np.zeros((len(counts), slots), np.int32)
    valid = np.zeros((len(counts), slots), bool)
    yy, xx = np.mgrid[:size, :size]
    for b, count in enumerate(counts):
        for m in range(count):
            cy, cx, r = *rng.uniform(0, size, 2), rng.uniform(size / 20, size / 4)
            masks[b, m] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            labels[b, m] = rng.integers(0, 80)
            valid[b, m] = True
    return {"masks": masks, "labels": labels, "valid": valid}


def make_predictions(rng, batch, queries, size, sets, classes=80):
    return [
        {
            "pred_logits": rng.normal(size=(batch, queries, classes + 1)).astype(np.float32),
            "pred_masks": (3 * rng.normal(size=(batch, queries, size // 4, size // 4))).astype(np.float32),
        }
        for _ in range(sets)
    ]


def ours_fn(predictions, targets, num_points, losses_module=None):
    """A callable running our criterion's forward + backward once (returns the total loss)."""
    import tensorflow as tf

    import losses
    from config import Mask2FormerConfig

    config = Mask2FormerConfig()
    config.loss.num_points = num_points
    criterion = (losses_module or losses).build_criterion(config)
    variables = [tf.Variable(p[k]) for p in predictions for k in ("pred_logits", "pred_masks")]
    targets = {k: tf.constant(v) for k, v in targets.items()}

    @tf.function
    def step(seed):
        with tf.GradientTape() as tape:
            sets = [
                {"pred_logits": variables[2 * i], "pred_masks": variables[2 * i + 1]} for i in range(len(predictions))
            ]
            outputs = dict(sets[-1], aux_outputs=sets[:-1])
            total = criterion(outputs, targets, seed=seed)["loss_total"]
        grads = tape.gradient(total, variables)
        return total, tf.add_n([tf.reduce_sum(g) for g in grads])

    counter = iter(range(10**9))
    images = len(targets["valid"])
    return lambda: float(step(tf.constant([[next(counter), i] for i in range(images)]))[0])  # per-image seeds


LOSS_WEIGHTS = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def reference_targets(targets):
    """The real targets of `make_targets` as the reference takes them: per image (N, H, W) float32 masks
    and (N,) int64 labels (torch)."""
    import torch

    valid = targets["valid"]
    masks = [torch.from_numpy(m[v].astype(np.float32)) for m, v in zip(targets["masks"], valid, strict=True)]
    labels = [torch.from_numpy(lab[v].astype(np.int64)) for lab, v in zip(targets["labels"], valid, strict=True)]
    return masks, labels


def reference_criterion(predictions, targets, num_points):
    """transformers' `Mask2FormerLoss` with our loss weights on `predictions` (as torch leaves that need
    gradients) and the real targets: returns (loss, tensors, mask_labels, class_labels, total), `total()`
    the weighted sum over all prediction sets as `Mask2FormerForUniversalSegmentation` computes it."""
    import torch
    from transformers import Mask2FormerConfig as HFConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    loss = Mask2FormerLoss(HFConfig(num_labels=80, train_num_points=num_points, backbone_config=None), LOSS_WEIGHTS)
    tensors = [{k: torch.from_numpy(p[k]).requires_grad_() for k in ("pred_logits", "pred_masks")} for p in predictions]
    mask_labels, class_labels = reference_targets(targets)

    def total():
        final = tensors[-1]
        aux = [
            {"masks_queries_logits": t["pred_masks"], "class_queries_logits": t["pred_logits"]} for t in tensors[:-1]
        ]
        losses = loss(final["pred_masks"], final["pred_logits"], mask_labels, class_labels, auxiliary_predictions=aux)
        return sum(LOSS_WEIGHTS[k.rstrip("_0123456789")] * v for k, v in losses.items())

    return loss, tensors, mask_labels, class_labels, total


def reference_fn(predictions, targets, num_points):
    _, tensors, _, _, total_loss = reference_criterion(predictions, targets, num_points)

    def run():
        total = total_loss()
        for t in tensors:
            for x in t.values():
                x.grad = None
        total.backward()
        return float(total)

    return run


def build(args, which):
    rng = np.random.default_rng(args.seed)
    counts = [int(c) for c in args.instances.split(",")]
    targets = make_targets(rng, counts, args.size, args.max_instances)
    predictions = make_predictions(rng, len(counts), args.queries, args.size, args.sets)
    maker = ours_fn if which == "ours" else reference_fn
    return maker(predictions, targets, args.num_points)


def describe(args) -> str:
    return (
        f"criterion forward + backward: {len(args.instances.split(','))} x {args.size}x{args.size}, instances "
        f"{args.instances}, {args.queries} queries, {args.sets} sets, {args.num_points} points"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="input side; predicted masks are a quarter")
    parser.add_argument("--instances", default="5,10", help="instances per image, comma separated")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--sets", type=int, default=10)
    parser.add_argument("--num-points", type=int, default=12544)
    parser.add_argument("--max-instances", type=int, default=128, help="data.max_instances (caps the bucket)")
    add_common_arguments(parser, warmup=2, repeats=7)
    run_main(__file__, parser, build, describe)


if __name__ == "__main__":
    main()

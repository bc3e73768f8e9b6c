"""Mask2Former's set criterion: match, then weighted cross-entropy and point-sampled mask losses.

Per prediction set (the final one and every auxiliary one, each matched on its own):
  - `loss_ce`: cross-entropy over all queries, unmatched queries -> the no-object class K, class
    weights [1, ..., 1, no_object_weight], weighted mean (divided by the sum of the targets' weights).
  - `loss_mask`: for each matched pair, mean BCE-with-logits over its importance-sampled points;
    summed over pairs / num_masks.
  - `loss_dice`: for each matched pair, 1 - (2 sum(p t) + 1) / (sum p + sum t + 1); summed / num_masks.
Keys: `loss_ce`, `loss_mask`, `loss_dice` for the final set, `loss_ce_{i}` ... for auxiliary set i
(earliest first), and `loss_total` = sum over sets of class_weight * ce + mask_weight * mask +
dice_weight * dice.

Shapes: targets are padded to M slots (`valid` says which are real; the training pipeline pads each
batch to a small bucket of its real count), each image has R = min(Q, M) rows of per-pair points.
With `dynamic_pairs` M may be left open in a traced graph (one trace serves every bucket). Only the
matched pairs (ordered by image and query, as the reference orders them) are point-sampled; with
`dynamic_pairs=False` all R rows are, the unmatched ones masked, so that the loss runs under
`jax.jit` or `tf.function(jit_compile=True)` (and traces once per M).

Normalisers and gradient accumulation: by default `num_masks` is this batch's number of valid targets,
clamped at 1, and `class_weight_sum` is this batch's sum of target-class weights, as the reference on one
device. To make k micro-batches (or several replicas) give the gradient of one batch, the training step
passes both explicitly for the whole optimizer step (`local_normalizers` counts a micro-batch; sum them over
the step's micro-batches, and average num_masks over replicas) and SUMS the micro-batch losses: each term
is then that micro-batch's share of the full-batch loss.

Randomness: every point is drawn from per-image seeds with stateless draws (losses/random.py), or passed
in as `points` (one `SetPoints` per prediction set, final set first), e.g. to reproduce a reference run or
to compare backends. The per-pair points (importance sampling's candidates and random share, 3x and 1/4 of
the matching points per pair) are drawn after matching, for the matched pairs only.

Everything is keras.ops: the same criterion runs in the TensorFlow, JAX and PyTorch training steps.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from keras import ops

from losses import random
from losses.matcher import HungarianMatcher
from losses.point_sampling import dim, importance_sample_points, sample_points_per_row


class SetPoints(NamedTuple):
    """The random points of one prediction set.

    match: (B, P, 2) uniform points shared by all predictions and targets of an image (matching costs).
    oversampled: (B, R, k*P, 2) uniform candidates for importance sampling, one row per matched pair.
    random: (B, R, P - int(ratio*P), 2) uniform points ("fresh") or (B, R, k*P - int(ratio*P)) keys
        ("oversampled"); see `importance_sample_points`.
    `oversampled` and `random` may instead be (B, 2) int32 per-image seeds (what `draw_points` gives):
    row r of image b is then row r of `random.uniform(seed[b], [R, ...])`, and only the matched rows are
    drawn where the backend's draws do not depend on the row count (TensorFlow, PyTorch).
    """

    match: object
    oversampled: object
    random: object


def _is_seed(field) -> bool:
    return len(field.shape) == 2


class SetCriterion:
    """Mask2Former's loss with the matcher injected.

    Args:
        num_classes: int, K (the no-object class is index K).
        matcher: `HungarianMatcher`.
        class_weight, mask_weight, dice_weight: float, weights of the terms in `loss_total`.
        no_object_weight: float, cross-entropy weight of the no-object class.
        num_points: int, P, points per mask (matching and losses).
        oversample_ratio: float, k, candidates per point for importance sampling.
        importance_sample_ratio: float, share of the P points taken by uncertainty.
        random_points: "fresh" (official) or "oversampled"; where the remaining points come from.
        mask_stride: int, input pixels per predicted mask pixel: target masks are read on a canvas of
            (h * stride, w * stride), i.e. zero-padded like the padded input image.
        dynamic_pairs: point-sample exactly the matched pairs (a batch-dependent count, as the reference);
            False keeps all B * R rows with the unmatched ones masked (static shapes for jax.jit, XLA, TPU).
            The training step that calls the criterion sets it for its backend.

    Call: `criterion(outputs, targets, *, seed=None, points=None, num_masks=None, class_weight_sum=None)`
        outputs: `pred_logits` (B, Q, K+1), `pred_masks` (B, Q, h, w), optional `aux_outputs` (list of
            dicts with the same keys). targets: `masks` (B, M, H, W) 0/1 (uint8 or float), `labels`
            (B, M) int32, `valid` (B, M) bool. seed: (B, 2) int32 per-image seeds of the draws (default: drawn
            from numpy). points: list of `SetPoints` (final set first) instead of drawing. num_masks,
            class_weight_sum: explicit normalisers of the whole optimizer step (see the module docstring;
            num_masks is clamped at 1).
        Returns a dict of float32 scalars (see the module docstring).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        *,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        random_points: str = "fresh",
        mask_stride: int = 4,
        dynamic_pairs: bool = True,
    ):
        if random_points not in ("fresh", "oversampled"):
            raise ValueError(f"random_points must be 'fresh' or 'oversampled', got {random_points!r}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.random_points = random_points
        self.mask_stride = mask_stride
        self.dynamic_pairs = dynamic_pairs
        self.num_oversampled = int(num_points * oversample_ratio)
        self.num_uncertain = int(importance_sample_ratio * num_points)

    # ------------------------------------------------------------------------------- randomness
    def _row_shapes(self) -> tuple[list[int], list[int]]:
        """The shape of one row of `SetPoints.oversampled` and of `SetPoints.random`."""
        if self.random_points == "fresh":
            return [self.num_oversampled, 2], [self.num_points - self.num_uncertain, 2]
        return [self.num_oversampled, 2], [self.num_oversampled - self.num_uncertain]

    def draw_points(self, image_seeds, num_sets: int) -> list[SetPoints]:
        """Draws for `num_sets` prediction sets from (B, 2) int32 per-image seeds (image i's points depend
        on its seed only, not on the batch it is in).

        The matching points are drawn; `oversampled` and `random` are left as (B, 2) per-image seeds, drawn
        after matching for the matched pairs only (see `SetPoints`; `materialize` draws R rows)."""
        image_seeds = ops.convert_to_tensor(image_seeds, "int32")
        batch = image_seeds.shape[0]
        derived = [[random.fold_in(image_seeds[b], i) for b in range(batch)] for i in range(3 * num_sets)]
        return [
            SetPoints(
                match=ops.stack([random.uniform(seed, [self.num_points, 2]) for seed in derived[3 * s]]),
                oversampled=ops.stack(derived[3 * s + 1]),
                random=ops.stack(derived[3 * s + 2]),
            )
            for s in range(num_sets)
        ]

    def materialize(self, points: list[SetPoints], num_rows: int) -> list[SetPoints]:
        """`points` with every per-image seed replaced by its draw of `num_rows` rows, (B, R, ...)."""
        shapes = self._row_shapes()

        def rows(field, shape):
            if not _is_seed(field):
                return field
            return ops.stack([random.uniform(field[b], [num_rows, *shape]) for b in range(field.shape[0])])

        return [SetPoints(p.match, *(rows(f, shape) for f, shape in zip(p[1:], shapes, strict=True))) for p in points]

    # ------------------------------------------------------------------------------ normalisers
    def local_normalizers(self, valid, num_queries: int) -> dict:
        """This batch's unreduced normaliser counts (sum them over micro-batches for accumulation).

        Args:
            valid: (B, M) bool. num_queries: Q.
        Returns:
            `num_masks` (valid targets, not averaged over replicas nor clamped) and `class_weight_sum`
            (sum over queries of the weight of their target class: matched pairs weigh 1, the rest
            no_object_weight), both float32 scalars.
        """
        per_image = ops.sum(ops.cast(valid, "float32"), axis=1)
        matched = ops.sum(ops.minimum(per_image, float(num_queries)))
        total = float(valid.shape[0] * num_queries)
        return {
            "num_masks": ops.sum(per_image),
            "class_weight_sum": matched + self.no_object_weight * (total - matched),
        }

    # ------------------------------------------------------------------------------------ terms
    def class_losses(self, pred_logits, query_target, labels, class_weight_sum=None):
        """Weighted cross-entropy of every set: (S, B, Q, K+1), (S, B, Q) matched slot or -1, (B, M) -> (S,)."""
        logits = ops.cast(pred_logits, "float32")
        num_sets = query_target.shape[0]
        matched = query_target >= 0
        slot_labels = ops.take_along_axis(
            ops.tile(labels[None], [num_sets, 1, 1]), ops.maximum(query_target, 0), axis=2
        )  # (S, B, Q)
        target_class = ops.where(matched, slot_labels, self.num_classes)
        weight = ops.where(matched, 1.0, self.no_object_weight)
        log_prob = ops.log_softmax(logits, axis=-1)
        nll = -ops.take_along_axis(log_prob, target_class[..., None], axis=3)[..., 0]
        if class_weight_sum is None:
            class_weight_sum = ops.sum(weight, axis=(1, 2))
        return ops.sum(weight * nll, axis=(1, 2)) / class_weight_sum

    def _pairs(self, pair_valid, num_rows):
        """(image, row) of the point-sampled rows and their mask (None: all are matched pairs)."""
        if self.dynamic_pairs:  # the N matched pairs, image by image in query order (as the reference)
            image, row = ops.nonzero(pair_valid)
            return ops.cast(image, "int32"), ops.cast(row, "int32"), None
        batch = pair_valid.shape[0]
        image = ops.repeat(ops.arange(batch, dtype="int32"), num_rows)
        row = ops.tile(ops.arange(num_rows, dtype="int32"), [batch])
        return image, row, ops.reshape(pair_valid, [-1])

    def _pair_points(self, points: SetPoints, pair_valid, image, row, num_rows):
        """The oversampled and random points of the sampled rows, (N, ...) each."""
        if not _is_seed(points.oversampled):
            flat = image * num_rows + row
            return tuple(ops.take(ops.reshape(f, [-1, *f.shape[2:]]), flat, axis=0) for f in points[1:])
        counts = [num_rows] * pair_valid.shape[0]
        if self.dynamic_pairs:
            counts = [ops.sum(ops.cast(pair_valid[b], "int32")) for b in range(pair_valid.shape[0])]
        return tuple(
            ops.concatenate([random.uniform(seeds[b], [count, *shape]) for b, count in enumerate(counts)], axis=0)
            for seeds, shape in zip(points[1:], self._row_shapes(), strict=True)
        )

    def mask_losses(self, pred_masks, query_target, masks, points: list[SetPoints], num_masks, canvas=None):
        """Point-sampled BCE and dice over the matched pairs of every set, each summed / num_masks.

        The pairs of all sets are sampled together (one importance sampling, one read of predictions and
        targets); each set only gathers its matched maps and draws its pairs' points.

        pred_masks: S x (B, Q, h, w). query_target: (S, B, Q). masks: (B, M, H, W) target masks.
        Returns two (S,) tensors."""
        num_sets, batch, num_queries = query_target.shape
        num_slots = dim(masks, 1)  # an int, or a tensor in a TF graph traced for any M
        num_rows = min(num_queries, num_slots) if isinstance(num_slots, int) else ops.minimum(num_queries, num_slots)
        height, width = pred_masks[0].shape[2:]
        preds, target_rows, set_ids, keeps, pair_points = [], [], [], [], []
        for s in range(num_sets):
            matched = query_target[s] >= 0
            # Matched queries first, in query order: (B, Q) -> (B, R).
            order = ops.where(matched, 0, num_queries) + ops.arange(num_queries, dtype="int32")[None]
            query = ops.cast(ops.argsort(order, axis=1), "int32")[:, :num_rows]
            pair_valid = ops.take_along_axis(matched, query, axis=1)
            target = ops.maximum(ops.take_along_axis(query_target[s], query, axis=1), 0)
            image, row, keep = self._pairs(pair_valid, num_rows)
            flat_pair = image * num_rows + row
            # Only the matched maps are read (their gradient is N maps, not Q dense maps).
            pred_query = ops.take(ops.reshape(query, [-1]), flat_pair)
            maps = ops.reshape(ops.cast(pred_masks[s], "float32"), [-1, height, width])
            preds.append(ops.take(maps, image * num_queries + pred_query, axis=0))
            target_rows.append(image * num_slots + ops.take(ops.reshape(target, [-1]), flat_pair))
            set_ids.append(ops.full(ops.shape(image), s, "int32"))
            keeps.append(keep)
            pair_points.append(self._pair_points(points[s], pair_valid, image, row, num_rows))
        pred = ops.concatenate(preds, axis=0)[None]  # (1, N, h, w), the pairs of every set
        rows = ops.arange(ops.shape(pred)[1], dtype="int32")[None]  # (1, N)
        oversampled, random_draw = (ops.concatenate(f, axis=0)[None] for f in zip(*pair_points, strict=True))
        coords = importance_sample_points(
            pred, rows, oversampled, random_draw, self.num_points, self.num_uncertain, self.random_points
        )  # (1, N, P, 2)
        logits = sample_points_per_row(pred, rows, coords)  # (1, N, P)
        all_masks = ops.reshape(masks, [1, -1, *masks.shape[2:]])  # (1, B*M, H, W)
        target_rows = ops.concatenate(target_rows, axis=0)[None]
        labels = ops.stop_gradient(sample_points_per_row(all_masks, target_rows, coords, canvas))
        # BCE with logits as TensorFlow and torch compute it: max(x, 0) - x z + log(1 + exp(-|x|)).
        bce = ops.mean(ops.relu(logits) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits))), axis=-1)[0]
        prob = ops.sigmoid(logits)
        dice = 1.0 - (2.0 * ops.sum(prob * labels, -1) + 1.0) / (ops.sum(prob, -1) + ops.sum(labels, -1) + 1.0)
        dice = dice[0]
        if not self.dynamic_pairs:
            keep = ops.concatenate(keeps, axis=0)
            bce, dice = ops.where(keep, bce, 0.0), ops.where(keep, dice, 0.0)
        set_ids = ops.concatenate(set_ids, axis=0)
        per_set = [ops.segment_sum(x, set_ids, num_segments=num_sets) / num_masks for x in (bce, dice)]
        return per_set[0], per_set[1]

    # ------------------------------------------------------------------------------------- call
    def __call__(self, outputs, targets, *, seed=None, points=None, num_masks=None, class_weight_sum=None):
        prediction_sets = [outputs] + list(outputs.get("aux_outputs", []))
        suffixes = [""] + [f"_{i}" for i in range(len(prediction_sets) - 1)]
        masks = targets["masks"]
        labels = ops.cast(targets["labels"], "int32")
        valid = ops.cast(targets["valid"], "bool")
        batch_size, num_queries = outputs["pred_masks"].shape[:2]
        canvas = self._check_shapes(prediction_sets, masks, labels, valid)

        if points is None:
            if seed is None:
                seed = random.image_seeds(int(np.random.default_rng().integers(2**31 - 1)), 0, batch_size)
            points = self.draw_points(seed, len(prediction_sets))
        if len(points) != len(prediction_sets):
            raise ValueError(f"points has {len(points)} entries for {len(prediction_sets)} prediction sets")

        # Match every prediction set at once: (S * B, Q, M) costs -> (S, B, Q) matched slot or -1.
        pred_logits = ops.stack([p["pred_logits"] for p in prediction_sets])  # (S, B, Q, K+1)
        pred_masks = [p["pred_masks"] for p in prediction_sets]
        coords = ops.stack([pts.match for pts in points])  # (S, B, P, 2)
        costs = self.matcher.cost_matrices(pred_logits, pred_masks, labels, masks, coords, canvas)
        query_target = self.matcher.assign(costs, ops.tile(valid, [len(prediction_sets), 1]))
        query_target = ops.reshape(ops.cast(query_target, "int32"), [len(prediction_sets), batch_size, num_queries])

        if num_masks is None:
            num_masks = ops.sum(ops.cast(valid, "float32"))
        num_masks = ops.maximum(ops.cast(num_masks, "float32"), 1.0)
        if class_weight_sum is not None:
            class_weight_sum = ops.cast(class_weight_sum, "float32")
        terms = {"loss_ce": self.class_losses(pred_logits, query_target, labels, class_weight_sum)}
        terms["loss_mask"], terms["loss_dice"] = self.mask_losses(
            pred_masks, query_target, masks, points, num_masks, canvas
        )
        losses = {f"{name}{suffix}": values[s] for name, values in terms.items() for s, suffix in enumerate(suffixes)}
        weighted = self.class_weight * terms["loss_ce"] + self.mask_weight * terms["loss_mask"]
        losses["loss_total"] = ops.sum(weighted + self.dice_weight * terms["loss_dice"])
        return losses

    def _check_shapes(self, prediction_sets, masks, labels, valid) -> tuple[int, int] | None:
        """Raises ValueError on inconsistent shapes; returns the canvas target masks are read in."""
        batch_size, num_queries, mask_h, mask_w = prediction_sets[0]["pred_masks"].shape
        for i, p in enumerate(prediction_sets):
            name = "outputs" if i == 0 else f"outputs['aux_outputs'][{i - 1}]"
            if tuple(p["pred_logits"].shape) != (batch_size, num_queries, self.num_classes + 1):
                raise ValueError(
                    f"{name}['pred_logits'] has shape {tuple(p['pred_logits'].shape)}, expected "
                    f"{(batch_size, num_queries, self.num_classes + 1)} (num_classes + 1 = no-object); "
                    "check config.model.num_classes"
                )
            if tuple(p["pred_masks"].shape) != (batch_size, num_queries, mask_h, mask_w):
                raise ValueError(
                    f"{name}['pred_masks'] has shape {tuple(p['pred_masks'].shape)}, expected all sets alike"
                )
        if len(masks.shape) != 4 or tuple(masks.shape[:2]) != tuple(valid.shape) or labels.shape != valid.shape:
            raise ValueError(
                f"targets must be masks (B, M, H, W), labels (B, M), valid (B, M); got {tuple(masks.shape)}, "
                f"{tuple(labels.shape)}, {tuple(valid.shape)}"
            )
        if masks.shape[0] != batch_size:
            raise ValueError(f"targets have batch size {masks.shape[0]} but predictions {batch_size}")
        canvas = (mask_h * self.mask_stride, mask_w * self.mask_stride)
        height, width = masks.shape[2:]
        if height > canvas[0] or width > canvas[1]:
            raise ValueError(
                f"target masks are {height}x{width} but the predicted masks cover only {canvas[0]}x{canvas[1]} "
                f"input pixels (mask_stride {self.mask_stride}); give targets at the input image resolution"
            )
        return None if (height, width) == canvas else canvas


def build_criterion(config, *, dynamic_pairs: bool = True) -> SetCriterion:
    """The criterion of `config.loss` for `config.model.num_classes` classes; `dynamic_pairs` as the training
    step's backend and compilation allow (see `SetCriterion`)."""
    loss = config.loss
    matcher = HungarianMatcher(
        cost_class=loss.class_weight, cost_mask=loss.mask_weight, cost_dice=loss.dice_weight, backend=loss.matcher
    )
    return SetCriterion(
        config.model.num_classes,
        matcher,
        class_weight=loss.class_weight,
        mask_weight=loss.mask_weight,
        dice_weight=loss.dice_weight,
        no_object_weight=loss.no_object_weight,
        num_points=loss.num_points,
        oversample_ratio=loss.oversample_ratio,
        importance_sample_ratio=loss.importance_sample_ratio,
        random_points=loss.random_points,
        dynamic_pairs=dynamic_pairs,
    )

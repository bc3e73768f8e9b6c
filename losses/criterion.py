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
`tf.function(jit_compile=True)` with the "tf" matcher (and traces once per M).

Normalisers and gradient accumulation: by default `num_masks` is this batch's number of valid targets,
averaged over replicas (all-reduced in the replica context), clamped at 1, and `class_weight_sum` is this
batch's sum of target-class weights, exactly as the reference. To make k micro-batches give the gradient
of one batch, pass both explicitly for the whole optimizer step (`local_normalizers` counts a micro-batch;
sum them over the step's micro-batches, and all-reduce-average num_masks over replicas) and SUM the
micro-batch losses: each term is then that micro-batch's share of the full-batch loss.

Randomness: every point is drawn from `seed` with stateless ops, or passed in as `points`
(one `SetPoints` per prediction set, final set first), e.g. to reproduce a reference run. The per-pair
points (importance sampling's candidates and random share, 12x the matching points) are drawn after
matching, for the matched pairs only, from per-image seeds.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import tensorflow as tf

from losses.matcher import HungarianMatcher
from losses.point_sampling import importance_sample_points, map_major, pixel_major, read_rows


class SetPoints(NamedTuple):
    """The random points of one prediction set.

    match: (B, P, 2) uniform points shared by all predictions and targets of an image (matching costs).
    oversampled: (B, R, k*P, 2) uniform candidates for importance sampling, one row per matched pair.
    random: (B, R, P - int(ratio*P), 2) uniform points ("fresh") or (B, R, k*P - int(ratio*P)) keys
        ("oversampled"); see `importance_sample_points`.
    `oversampled` and `random` may instead be (B, 2) int32 per-image seeds (what `draw_points` gives):
    row r of image b is then row r of `tf.random.stateless_uniform([R, ...], seed[b])` (a stateless draw's
    first rows do not depend on how many rows are drawn), and only the matched rows are drawn.
    """

    match: tf.Tensor
    oversampled: tf.Tensor
    random: tf.Tensor


def _draw_rows(seeds: tf.Tensor, counts, shape: list[int]) -> tf.Tensor:
    """Rows 0 .. counts[b] - 1 of each image's stateless draw, images one after another.

    seeds: (B, 2) int32. counts: B row counts (ints or int32 scalars). shape: the shape of one row.
    Returns (sum(counts), *shape) float32 uniform in [0, 1).
    """
    draws = [
        tf.random.stateless_uniform([count, *shape] if isinstance(count, int) else tf.stack([count, *shape]), seeds[b])
        for b, count in enumerate(counts)
    ]
    return tf.concat(draws, axis=0)


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
            False keeps all B * R rows with the unmatched ones masked (static shapes for XLA and TPU).

    Call: `criterion(outputs, targets, *, seed=None, points=None, num_masks=None, class_weight_sum=None)`
        outputs: `pred_logits` (B, Q, K+1), `pred_masks` (B, Q, h, w), optional `aux_outputs` (list of
            dicts with the same keys). targets: `masks` (B, M, H, W) 0/1 (uint8 or float), `labels`
            (B, M) int32, `valid` (B, M) bool. seed: (2,) int32 for the stateless draws (default: drawn;
            XLA and the regular kernels turn one seed into different numbers). points: list of `SetPoints`
            (final set first) instead of drawing. num_masks, class_weight_sum: explicit normalisers of the
            whole optimizer step for gradient accumulation (see the module docstring; num_masks is
            clamped at 1 but not reduced over replicas).
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

    def draw_points(self, seed: tf.Tensor, batch_size: int, num_sets: int) -> list[SetPoints]:
        """Stateless uniform draws for `num_sets` prediction sets from one (2,) int32 seed.

        The matching points are drawn; `oversampled` and `random` are left as (B, 2) per-image seeds, drawn
        after matching for the matched pairs only (see `SetPoints`; `materialize` draws R rows)."""
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), num=3 * num_sets)
        split = tf.random.experimental.stateless_split
        return [
            SetPoints(
                match=tf.random.stateless_uniform([batch_size, self.num_points, 2], seeds[3 * s]),
                oversampled=split(seeds[3 * s + 1], batch_size),
                random=split(seeds[3 * s + 2], batch_size),
            )
            for s in range(num_sets)
        ]

    def materialize(self, points: list[SetPoints], num_rows: int) -> list[SetPoints]:
        """`points` with every per-image seed replaced by its draw of `num_rows` rows, (B, R, ...)."""
        shapes = self._row_shapes()

        def rows(field, shape):
            if field.shape.rank != 2:
                return field
            return tf.reshape(_draw_rows(field, [num_rows] * field.shape[0], shape), [field.shape[0], num_rows, *shape])

        return [SetPoints(p.match, *(rows(f, shape) for f, shape in zip(p[1:], shapes, strict=True))) for p in points]

    # ------------------------------------------------------------------------------ normalisers
    def local_normalizers(self, valid: tf.Tensor, num_queries: int) -> dict[str, tf.Tensor]:
        """This batch's unreduced normaliser counts (sum them over micro-batches for accumulation).

        Args:
            valid: (B, M) bool. num_queries: Q.
        Returns:
            `num_masks` (valid targets, not averaged over replicas nor clamped) and `class_weight_sum`
            (sum over queries of the weight of their target class: matched pairs weigh 1, the rest
            no_object_weight), both float32 scalars.
        """
        per_image = tf.reduce_sum(tf.cast(valid, tf.float32), axis=1)
        matched = tf.reduce_sum(tf.minimum(per_image, float(num_queries)))
        total = float(valid.shape[0] * num_queries)
        return {
            "num_masks": tf.reduce_sum(per_image),
            "class_weight_sum": matched + self.no_object_weight * (total - matched),
        }

    @staticmethod
    def _replica_mean_clamped(num_masks: tf.Tensor) -> tf.Tensor:
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            num_masks = context.all_reduce(tf.distribute.ReduceOp.SUM, num_masks) / context.num_replicas_in_sync
        return tf.maximum(num_masks, 1.0)

    # ------------------------------------------------------------------------------------ terms
    def class_loss(self, pred_logits, query_target, labels, class_weight_sum=None):
        """Weighted cross-entropy: (B, Q, K+1), (B, Q) matched slot or -1, (B, M) -> scalar."""
        logits = tf.cast(pred_logits, tf.float32)
        matched = query_target >= 0
        target_class = tf.where(
            matched, tf.gather(labels, tf.maximum(query_target, 0), batch_dims=1), self.num_classes
        )  # (B, Q)
        weight = tf.where(matched, 1.0, self.no_object_weight)
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_class, logits=logits)
        if class_weight_sum is None:
            class_weight_sum = tf.reduce_sum(weight)
        return tf.reduce_sum(weight * nll) / class_weight_sum

    def mask_losses(self, pred_masks, query_target, target_maps, points: SetPoints, num_masks):
        """Point-sampled BCE and dice over matched pairs, each summed / num_masks.

        target_maps: `map_major` layout of all target masks as one image, (1, B*M, H, W)."""
        batch, num_queries = query_target.shape
        num_slots = target_maps.num_maps // batch  # an int, or a tensor in a graph traced for any M
        num_rows = min(num_queries, num_slots) if isinstance(num_slots, int) else tf.minimum(num_queries, num_slots)
        matched = query_target >= 0
        # Matched queries first, in query order: (B, Q) -> (B, R).
        query = tf.argsort(tf.cast(~matched, tf.int32), axis=1, stable=True)[:, :num_rows]
        pair_valid = tf.gather(matched, query, batch_dims=1)
        target = tf.maximum(tf.gather(query_target, query, batch_dims=1), 0)
        if self.dynamic_pairs:  # the N matched pairs, image by image in query order (as the reference)
            pairs, keep = tf.where(pair_valid), None  # (N, 2) [image, row]
        else:  # static shapes (XLA, TPU): all B * R rows, the unmatched ones masked out
            pairs = tf.reshape(tf.stack(tf.meshgrid(tf.range(batch), tf.range(num_rows), indexing="ij"), -1), [-1, 2])
            keep = tf.reshape(pair_valid, [-1])
        pairs = tf.cast(pairs, tf.int32)
        image = pairs[:, 0]
        # Only the matched maps are read (their gradient is N maps, not Q dense maps per corner).
        pred = tf.gather_nd(tf.cast(pred_masks, tf.float32), tf.stack([image, tf.gather_nd(query, pairs)], -1))
        pred_maps = map_major(pred[None])  # (1, N, h, w)
        rows = tf.range(tf.shape(pairs)[0])[None]  # (1, N)
        if points.oversampled.shape.rank == 2:  # per-image seeds: draw the rows of the pairs only
            counts = tf.unstack(tf.reduce_sum(tf.cast(pair_valid, tf.int32), 1)) if keep is None else [num_rows] * batch
            oversampled, random = (
                _draw_rows(seeds, counts, shape) for seeds, shape in zip(points[1:], self._row_shapes(), strict=True)
            )
        else:
            oversampled, random = tf.gather_nd(points.oversampled, pairs), tf.gather_nd(points.random, pairs)
        coords = importance_sample_points(
            pred_maps,
            rows,
            oversampled[None],
            random[None],
            self.num_points,
            self.num_uncertain,
            self.random_points,
        )  # (1, N, P, 2)
        logits = read_rows(pred_maps, rows, coords)  # (1, N, P)
        target_rows = (image * num_slots + tf.gather_nd(target, pairs))[None]
        labels = tf.stop_gradient(read_rows(target_maps, target_rows, coords))
        bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits), axis=-1)
        prob = tf.sigmoid(logits)
        dice = 1.0 - (2.0 * tf.reduce_sum(prob * labels, -1) + 1.0) / (
            tf.reduce_sum(prob, -1) + tf.reduce_sum(labels, -1) + 1.0
        )
        if keep is not None:
            bce, dice = tf.where(keep[None], bce, 0.0), tf.where(keep[None], dice, 0.0)
        return tf.reduce_sum(bce) / num_masks, tf.reduce_sum(dice) / num_masks

    # ------------------------------------------------------------------------------------- call
    def __call__(self, outputs, targets, *, seed=None, points=None, num_masks=None, class_weight_sum=None):
        prediction_sets = [outputs] + list(outputs.get("aux_outputs", []))
        suffixes = [""] + [f"_{i}" for i in range(len(prediction_sets) - 1)]
        masks, labels, valid = (
            targets["masks"],
            tf.cast(targets["labels"], tf.int32),
            tf.cast(targets["valid"], tf.bool),
        )
        batch_size, num_queries = outputs["pred_masks"].shape[:2]
        canvas = self._check_shapes(prediction_sets, masks, labels, valid)

        if points is None:
            if seed is None:
                seed = tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int32)
            points = self.draw_points(seed, batch_size, len(prediction_sets))
        if len(points) != len(prediction_sets):
            raise ValueError(f"points has {len(points)} entries for {len(prediction_sets)} prediction sets")

        # Target masks are laid out once for all prediction sets (shared points, then per pair).
        target_pixels = pixel_major(masks, canvas)
        target_maps = map_major(tf.reshape(masks, [1, -1, *masks.shape[2:]]), canvas)  # one image of B * M maps
        # Match every prediction set at once: (S * B, Q, M) costs -> (S, B, Q) matched slot or -1.
        costs = tf.concat(
            [
                self.matcher.cost_matrix(p["pred_logits"], p["pred_masks"], labels, target_pixels, pts.match)
                for p, pts in zip(prediction_sets, points, strict=True)
            ],
            axis=0,
        )
        query_target = self.matcher.assign(costs, tf.tile(valid, [len(prediction_sets), 1]))
        query_target = tf.reshape(query_target, [len(prediction_sets), batch_size, num_queries])

        if num_masks is None:
            num_masks = self._replica_mean_clamped(tf.reduce_sum(tf.cast(valid, tf.float32)))
        else:
            num_masks = tf.maximum(tf.cast(num_masks, tf.float32), 1.0)
        if class_weight_sum is not None:
            class_weight_sum = tf.cast(class_weight_sum, tf.float32)
        losses = {}
        for s, (prediction, pts, suffix) in enumerate(zip(prediction_sets, points, suffixes, strict=True)):
            losses[f"loss_ce{suffix}"] = self.class_loss(
                prediction["pred_logits"], query_target[s], labels, class_weight_sum
            )
            losses[f"loss_mask{suffix}"], losses[f"loss_dice{suffix}"] = self.mask_losses(
                prediction["pred_masks"], query_target[s], target_maps, pts, num_masks
            )
        losses["loss_total"] = tf.add_n(
            [
                self.class_weight * losses[f"loss_ce{s}"]
                + self.mask_weight * losses[f"loss_mask{s}"]
                + self.dice_weight * losses[f"loss_dice{s}"]
                for s in suffixes
            ]
        )
        return losses

    def _check_shapes(self, prediction_sets, masks, labels, valid) -> tuple[int, int] | None:
        """Raises ValueError on inconsistent shapes; returns the canvas target masks are read in."""
        batch_size, num_queries, mask_h, mask_w = prediction_sets[0]["pred_masks"].shape
        for i, p in enumerate(prediction_sets):
            name = "outputs" if i == 0 else f"outputs['aux_outputs'][{i - 1}]"
            if tuple(p["pred_logits"].shape) != (batch_size, num_queries, self.num_classes + 1):
                raise ValueError(
                    f"{name}['pred_logits'] has shape {p['pred_logits'].shape}, expected "
                    f"{(batch_size, num_queries, self.num_classes + 1)} (num_classes + 1 = no-object); "
                    "check config.model.num_classes"
                )
            if tuple(p["pred_masks"].shape) != (batch_size, num_queries, mask_h, mask_w):
                raise ValueError(f"{name}['pred_masks'] has shape {p['pred_masks'].shape}, expected all sets alike")
        if masks.shape.rank != 4 or tuple(masks.shape[:2]) != tuple(valid.shape) or labels.shape != valid.shape:
            raise ValueError(
                f"targets must be masks (B, M, H, W), labels (B, M), valid (B, M); got {masks.shape}, "
                f"{labels.shape}, {valid.shape}"
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


def build_criterion(config) -> SetCriterion:
    """The criterion of `config.loss` for `config.model.num_classes` classes."""
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
        dynamic_pairs=not (
            config.train.jit_compile or config.train.distribution == "tpu" or os.environ.get("TPU_NAME")
        ),
    )

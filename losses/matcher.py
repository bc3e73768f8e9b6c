"""Hungarian matching of predictions to targets, as in Mask2Former (no gradient, float32).

Costs (per image, per prediction set, on one shared set of uniformly drawn points):
    cost = cost_mask * BCE + cost_class * (-softmax(logits)[target]) + cost_dice * dice
with BCE the mean over points of sigmoid cross-entropy between every (prediction, target) pair and
dice = 1 - (2 sum(s t) + 1) / (sum s + sum t + 1), s = sigmoid(logit).

The optimal assignment is exact either way `backend` chooses (see losses/assignment.py): "scipy" solves on
the host from inside the compiled step, "device" runs the same algorithm on the accelerator (XLA, TPU).
"""

from __future__ import annotations

from keras import ops

from losses.assignment import ASSIGNMENT_BACKENDS
from losses.point_sampling import sample_shared_points


def pairwise_costs(pred, target):
    """Mean BCE-with-logits and dice of sigmoid(pred) for every pair: (B, Q, P), (B, M, P) -> 2 x (B, Q, M).

    The official matcher's BCE is two matmuls (softplus(-x) against t, softplus(x) against 1 - t);
    as softplus(-x) = softplus(x) - x it is sum_p softplus(x) - x t^T."""
    num_points = pred.shape[-1]
    prob = ops.sigmoid(pred)
    target_t = ops.transpose(target, [0, 2, 1])  # (B, P, M)
    logit_products = ops.matmul(pred, target_t)  # (B, Q, M)
    prob_products = ops.matmul(prob, target_t)
    negative = ops.sum(ops.softplus(pred), axis=-1)  # (B, Q)
    sigmoid_ce = (negative[:, :, None] - logit_products) / num_points
    denominator = ops.sum(prob, -1)[:, :, None] + ops.sum(target, -1)[:, None, :]
    dice = 1.0 - (2.0 * prob_products + 1.0) / (denominator + 1.0)
    return sigmoid_ce, dice


class HungarianMatcher:
    """Matches the queries of every image to its valid targets at minimum cost (no gradient).

    Args:
        cost_class: float, weight of -softmax(logits)[target class].
        cost_mask: float, weight of the pairwise sigmoid BCE on points.
        cost_dice: float, weight of the pairwise dice on points.
        backend: "scipy" (host) or "device" (see losses/assignment.py; "tf" is an old name of "device").
    """

    def __init__(self, *, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, backend="scipy"):
        if backend not in ASSIGNMENT_BACKENDS:
            raise ValueError(f"matcher backend must be one of {sorted(ASSIGNMENT_BACKENDS)}, got {backend!r}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.backend = backend

    def cost_matrices(self, pred_logits, pred_masks, labels, masks, coords, canvas=None):
        """Matching costs of S prediction sets, each on its own points.

        Args:
            pred_logits: (S, B, Q, K+1). pred_masks: list of S (B, Q, h, w) logits.
            labels: (B, M) int32 (any value in invalid slots). masks: (B, M, H, W) 0/1.
            coords: (S, B, P, 2) uniform points (x, y) in [0, 1], shared by the predictions and targets of
                an image in a set.
            canvas: (Hc, Wc) padded size the target masks are read in (None: their own size).
        Returns:
            (S * B, Q, M) float32 costs (set-major), no gradient.
        """
        pred_logits = ops.stop_gradient(ops.cast(pred_logits, "float32"))
        prob = ops.softmax(pred_logits, axis=-1)
        safe_labels = ops.clip(ops.cast(labels, "int32"), 0, pred_logits.shape[-1] - 1)
        cost_class = -ops.take_along_axis(prob, safe_labels[None, :, None, :], axis=3)  # (S, B, Q, M)
        pred_points = sample_shared_points([ops.stop_gradient(ops.cast(p, "float32")) for p in pred_masks], coords)
        target_points = sample_shared_points([masks] * len(pred_masks), coords, canvas)  # S x (B, M, P)
        costs = []
        for pred, target, class_cost in zip(pred_points, target_points, ops.unstack(cost_class), strict=True):
            sigmoid_ce, dice = pairwise_costs(pred, target)
            costs.append(self.cost_mask * sigmoid_ce + self.cost_class * class_cost + self.cost_dice * dice)
        return ops.stop_gradient(ops.concatenate(costs, axis=0))

    def assign(self, cost, valid):
        """Optimal matching of queries to valid targets.

        Args:
            cost: (N, Q, M) float32. valid: (N, M) bool.
        Returns:
            (N, Q) int32: the target slot matched to each query, -1 for no object.
        """
        queries = ops.ones(cost.shape[:2], "bool")
        return ASSIGNMENT_BACKENDS[self.backend](ops.stop_gradient(cost), queries, valid)

"""Hungarian matching of predictions to targets, as in Mask2Former (no gradient, float32).

Costs (per image, per prediction set, on one shared set of uniformly drawn points):
    cost = cost_mask * BCE + cost_class * (-softmax(logits)[target]) + cost_dice * dice
with BCE the mean over points of sigmoid cross-entropy between every (prediction, target) pair and
dice = 1 - (2 sum(s t) + 1) / (sum s + sum t + 1), s = sigmoid(logit).

Optimal assignment two ways, chosen by `backend`:
  - "scipy": `scipy.optimize.linear_sum_assignment` through `tf.numpy_function` (the reference; CPU/GPU).
  - "tf": `linear_sum_assignment_tf`, an exact shortest-augmenting-path Hungarian algorithm (the one
    scipy implements, Crouse 2016) in pure TensorFlow, batched over problems; it compiles with
    `jit_compile=True` and so also runs on TPU.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import tensorflow as tf

from losses.point_sampling import Layout, dim, pixel_major, read_shared

# A diverged model can produce non-finite costs; they become this (finite) value, so such pairs are
# matched only when nothing else is possible (transformers uses float max with scipy's float64 solver;
# the float32 TF solver needs headroom for its dual variables).
NONFINITE_COST = 1e8


# ------------------------------------------------------------------------------------------ costs
def pairwise_costs(pred: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean BCE-with-logits and dice of sigmoid(pred) for every pair: (B, P, Q), (B, P, M) -> 2 x (B, Q, M).

    The official matcher's BCE is two matmuls (softplus(-x) against t, softplus(x) against 1 - t);
    as softplus(-x) = softplus(x) - x it is sum_p softplus(x) - x^T t. The products are taken as
    t^T x and t^T sigmoid(x), (B, M, Q): with the few targets on the left the matmuls read the
    (B, P, Q) operands in their layout (no transposed or concatenated copy of them)."""
    num_points = tf.cast(tf.shape(pred)[1], pred.dtype)
    prob = tf.sigmoid(pred)
    logit_products = tf.matmul(target, pred, transpose_a=True)  # (B, M, Q)
    prob_products = tf.matmul(target, prob, transpose_a=True)
    negative = tf.reduce_sum(tf.nn.softplus(pred), axis=1)  # (B, Q)
    sigmoid_ce = (negative[:, None, :] - logit_products) / num_points
    denominator = tf.reduce_sum(prob, 1)[:, None, :] + tf.reduce_sum(target, 1)[:, :, None]
    dice = 1.0 - (2.0 * prob_products + 1.0) / (denominator + 1.0)
    return tf.transpose(sigmoid_ce, [0, 2, 1]), tf.transpose(dice, [0, 2, 1])


# ------------------------------------------------------------------------------ assignment: scipy
def _scipy_assign(cost: np.ndarray, row_valid: np.ndarray, col_valid: np.ndarray) -> np.ndarray:
    row_to_col = np.full(cost.shape[:2], -1, np.int32)
    for b in range(cost.shape[0]):
        rows, cols = np.flatnonzero(row_valid[b]), np.flatnonzero(col_valid[b])
        r, c = scipy.optimize.linear_sum_assignment(cost[b][np.ix_(rows, cols)])
        row_to_col[b, rows[r]] = cols[c]
    return row_to_col


def linear_sum_assignment_scipy(cost: tf.Tensor, row_valid: tf.Tensor, col_valid: tf.Tensor) -> tf.Tensor:
    """scipy's optimal assignment of each problem's valid rows and columns, inside a TF graph.

    Args:
        cost: (N, R, C) float. row_valid: (N, R) bool. col_valid: (N, C) bool.
    Returns:
        (N, R) int32: the column assigned to each row, -1 where none.
    """
    cost = tf.where(tf.math.is_finite(cost), cost, NONFINITE_COST)
    row_to_col = tf.numpy_function(_scipy_assign, [cost, row_valid, col_valid], tf.int32, stateful=False)
    return tf.ensure_shape(row_to_col, cost.shape[:2])


# --------------------------------------------------------------------------------- assignment: TF
def _solve_rows(cost: tf.Tensor, row_valid: tf.Tensor, col_valid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Shortest augmenting path assignment (scipy's algorithm), lockstep over N problems.

    Every valid row is assigned, one augmentation per row; each problem needs
    #valid rows <= #valid columns. Rows and columns that are not valid are never used.

    Args:
        cost: (N, R, C) float32, finite. row_valid: (N, R) bool. col_valid: (N, C) bool.
    Returns:
        col4row (N, R) and row4col (N, C) int32, -1 where unassigned.
    """
    num_problems, num_rows, num_cols = cost.shape[0], dim(cost, 1), dim(cost, 2)
    row_ids = tf.range(num_rows, dtype=tf.int32)[None]
    col_ids = tf.range(num_cols, dtype=tf.int32)[None]
    inf = tf.constant(np.inf, tf.float32)

    def gather_rows(x, index):  # index -1 (a finished problem) reads entry 0, which is then unused
        return tf.gather(x, tf.maximum(index, 0), axis=1, batch_dims=1)

    def augment(cur_row, u, v, col4row, row4col):
        active = row_valid[:, cur_row]
        first_row = tf.fill([num_problems], cur_row)

        def search_step(spc, path, row_seen, col_seen, min_val, row, sink, done):
            # Relax the edges of `row`, then settle the closest open column (Dijkstra on reduced costs).
            reduced = min_val[:, None] + gather_rows(cost, row) - gather_rows(u, row)[:, None] - v
            open_cols = col_valid & ~col_seen & ~done[:, None]
            better = open_cols & (reduced < spc)
            path = tf.where(better, row[:, None], path)
            spc = tf.where(better, reduced, spc)
            open_cost = tf.where(open_cols, spc, inf)
            lowest = tf.reduce_min(open_cost, axis=1)
            ties = open_cols & (open_cost == lowest[:, None])
            free_ties = ties & (row4col < 0)  # among equals prefer a free column, as scipy does
            col = tf.where(
                tf.reduce_any(free_ties, axis=1),
                tf.argmax(tf.cast(free_ties, tf.int32), axis=1, output_type=tf.int32),
                tf.argmax(tf.cast(ties, tf.int32), axis=1, output_type=tf.int32),
            )
            step = ~done & (lowest < inf)  # lowest == inf: infeasible (cannot happen when counts fit)
            col_seen = col_seen | ((col_ids == col[:, None]) & step[:, None])
            owner = gather_rows(row4col, col)
            found = step & (owner < 0)
            sink = tf.where(found, col, sink)
            min_val = tf.where(step, lowest, min_val)
            next_row = tf.where(step & ~found, owner, row)
            row_seen = row_seen | ((row_ids == next_row[:, None]) & (step & ~found)[:, None])
            return spc, path, row_seen, col_seen, min_val, next_row, sink, done | ~step | found

        state = (
            tf.fill([num_problems, num_cols], inf),
            tf.fill([num_problems, num_cols], -1),
            (row_ids == cur_row) & active[:, None],
            tf.zeros([num_problems, num_cols], tf.bool),
            tf.zeros([num_problems], tf.float32),
            first_row,
            tf.fill([num_problems], -1),
            ~active,
        )
        spc, path, row_seen, col_seen, min_val, _, sink, _ = tf.while_loop(
            lambda *s: tf.reduce_any(~s[-1]), search_step, state, maximum_iterations=num_cols
        )
        augmented = sink >= 0

        # Dual update (before augmenting: it reads the current col4row).
        spc_of_row = gather_rows(spc, col4row)
        du = tf.where(row_seen, min_val[:, None] - spc_of_row, 0.0)
        du = tf.where(row_ids == cur_row, min_val[:, None], du)
        u = u + tf.where(augmented[:, None], du, 0.0)
        v = v - tf.where(augmented[:, None] & col_seen, min_val[:, None] - spc, 0.0)

        # Flip the alternating path from the sink back to the current row.
        def flip_step(col, col4row, row4col, going):
            row = gather_rows(path, col)
            row4col = tf.where(going[:, None] & (col_ids == col[:, None]), row[:, None], row4col)
            previous = gather_rows(col4row, row)
            col4row = tf.where(going[:, None] & (row_ids == row[:, None]), col[:, None], col4row)
            return tf.where(going, previous, col), col4row, row4col, going & (row != cur_row)

        _, col4row, row4col, _ = tf.while_loop(
            lambda *s: tf.reduce_any(s[-1]),
            flip_step,
            (sink, col4row, row4col, augmented),
            maximum_iterations=num_rows,
        )
        return cur_row + 1, u, v, col4row, row4col

    init = (
        tf.constant(0),
        tf.zeros([num_problems, num_rows], tf.float32),
        tf.zeros([num_problems, num_cols], tf.float32),
        tf.fill([num_problems, num_rows], -1),
        tf.fill([num_problems, num_cols], -1),
    )
    _, _, _, col4row, row4col = tf.while_loop(lambda r, *_: r < num_rows, augment, init)
    return col4row, row4col


def linear_sum_assignment_tf(
    cost: tf.Tensor, row_valid: tf.Tensor | None = None, col_valid: tf.Tensor | None = None
) -> tf.Tensor:
    """Optimal assignment of each problem's valid rows and columns, in pure TensorFlow (XLA-ready).

    Assigns min(#valid rows, #valid columns) pairs at minimum total cost, like
    `scipy.optimize.linear_sum_assignment` on the valid sub-matrix (ties may pick a different optimum).
    Problems are padded to square and transposed where they have more valid rows than columns, so
    all of them are solved together.

    Args:
        cost: (N, R, C) float. row_valid: (N, R) bool, default all. col_valid: (N, C) bool, default all.
    Returns:
        (N, R) int32: the column assigned to each row, -1 where none.
    """
    num_problems, num_rows, num_cols = cost.shape[0], dim(cost, 1), dim(cost, 2)
    if row_valid is None:
        row_valid = tf.ones([num_problems, num_rows], tf.bool)
    if col_valid is None:
        col_valid = tf.ones([num_problems, num_cols], tf.bool)
    static = isinstance(num_rows, int) and isinstance(num_cols, int)
    size = max(num_rows, num_cols) if static else tf.maximum(num_rows, num_cols)
    if static and size == 0:
        return tf.fill([num_problems, num_rows], -1)
    cost = tf.cast(cost, tf.float32)
    cost = tf.where(tf.math.is_finite(cost), cost, NONFINITE_COST)
    cost = tf.pad(cost, [[0, 0], [0, size - num_rows], [0, size - num_cols]])
    row_valid = tf.pad(row_valid, [[0, 0], [0, size - num_rows]])
    col_valid = tf.pad(col_valid, [[0, 0], [0, size - num_cols]])
    count = lambda x: tf.reduce_sum(tf.cast(x, tf.int32), axis=1)  # noqa: E731
    flip = count(row_valid) > count(col_valid)  # solve the transpose: its rows are the smaller side
    col4row, row4col = _solve_rows(
        tf.where(flip[:, None, None], tf.transpose(cost, [0, 2, 1]), cost),
        tf.where(flip[:, None], col_valid, row_valid),
        tf.where(flip[:, None], row_valid, col_valid),
    )
    return tf.where(flip[:, None], row4col, col4row)[:, :num_rows]


ASSIGNMENT_BACKENDS = {"scipy": linear_sum_assignment_scipy, "tf": linear_sum_assignment_tf}


# -------------------------------------------------------------------------------------- matcher
class HungarianMatcher:
    """Matches the queries of every image to its valid targets at minimum cost (no gradient).

    Args:
        cost_class: float, weight of -softmax(logits)[target class].
        cost_mask: float, weight of the pairwise sigmoid BCE on points.
        cost_dice: float, weight of the pairwise dice on points.
        backend: "scipy" or "tf" (see the module docstring).
    """

    def __init__(self, *, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, backend="tf"):
        if backend not in ASSIGNMENT_BACKENDS:
            raise ValueError(f"matcher backend must be one of {sorted(ASSIGNMENT_BACKENDS)}, got {backend!r}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.backend = backend

    def cost_matrix(
        self,
        pred_logits: tf.Tensor,
        pred_masks: tf.Tensor,
        labels: tf.Tensor,
        masks: tf.Tensor | Layout,
        coords: tf.Tensor,
        canvas: tuple[int, int] | None = None,
    ) -> tf.Tensor:
        """Matching cost of one prediction set.

        Args:
            pred_logits: (B, Q, K+1). pred_masks: (B, Q, h, w) logits.
            labels: (B, M) int32 (any value in invalid slots). masks: (B, M, H, W) 0/1, or their
                `pixel_major` layout (built once for all prediction sets).
            coords: (B, P, 2) shared uniform points (x, y) in [0, 1].
            canvas: (Hc, Wc) padded size the target masks are read in (None: their own size; ignored
                for a layout, which has its canvas).
        Returns:
            (B, Q, M) float32 cost, no gradient.
        """
        pred_logits = tf.stop_gradient(tf.cast(pred_logits, tf.float32))
        pred_masks = tf.stop_gradient(tf.cast(pred_masks, tf.float32))
        prob = tf.nn.softmax(pred_logits, axis=-1)
        safe_labels = tf.clip_by_value(labels, 0, pred_logits.shape[-1] - 1)
        cost_class = -tf.gather(prob, safe_labels, axis=2, batch_dims=1)  # (B, Q, M)
        pred_points = read_shared(pixel_major(pred_masks), coords)  # (B, P, Q)
        targets = masks if isinstance(masks, Layout) else pixel_major(masks, canvas)
        target_points = read_shared(targets, coords)  # (B, P, M)
        sigmoid_ce, dice = pairwise_costs(pred_points, target_points)
        return self.cost_mask * sigmoid_ce + self.cost_class * cost_class + self.cost_dice * dice

    def assign(self, cost: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
        """Optimal matching of queries to valid targets.

        Args:
            cost: (N, Q, M) float32. valid: (N, M) bool.
        Returns:
            (N, Q) int32: the target slot matched to each query, -1 for no object.
        """
        queries = tf.ones(cost.shape[:2], tf.bool)
        return ASSIGNMENT_BACKENDS[self.backend](tf.stop_gradient(cost), queries, valid)

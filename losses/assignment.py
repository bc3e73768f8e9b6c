"""Optimal assignment of rows to columns (minimum total cost), batched over problems, on any Keras backend.

Both solvers take (N, R, C) float costs with (N, R) and (N, C) bool validity masks and return (N, R) int32,
the column of each row or -1: min(#valid rows, #valid columns) pairs of minimum total cost, as
`scipy.optimize.linear_sum_assignment` gives on each problem's valid sub-matrix.
  - `linear_sum_assignment_device`: the exact shortest-augmenting-path Hungarian algorithm that scipy
    implements (Crouse 2016) in `keras.ops`, all problems in lockstep; it compiles with XLA
    (`tf.function(jit_compile=True)`, `jax.jit`), so it can run on TPU, and runs eagerly on PyTorch.
  - `linear_sum_assignment_host`: scipy on the host, called from inside compiled code
    (`tf.numpy_function`, `jax.pure_callback`) or directly on PyTorch.
Among optima of equal cost the two may pick different assignments.
"""

from __future__ import annotations

import keras
import numpy as np
import scipy.optimize
from keras import ops

from losses.point_sampling import dim

# A diverged model can produce non-finite costs; they become this (finite) value, so such pairs are
# matched only when nothing else is possible (transformers uses float max with scipy's float64 solver;
# the float32 device solver needs headroom for its dual variables).
NONFINITE_COST = 1e8


def _masks_or_all(cost, row_valid, col_valid):
    """The validity masks as tensors, all True where None."""
    num_problems, num_rows, num_cols = dim(cost, 0), dim(cost, 1), dim(cost, 2)
    row_valid = ops.ones((num_problems, num_rows), "bool") if row_valid is None else ops.convert_to_tensor(row_valid)
    col_valid = ops.ones((num_problems, num_cols), "bool") if col_valid is None else ops.convert_to_tensor(col_valid)
    return row_valid, col_valid


# ------------------------------------------------------------------------------------------ device
def _gather_rows(x, index):
    """x[n, index[n]] for every problem n: (N, K) or (N, K, C) with (N,) -> (N,) or (N, C); (N, K) with
    (N, J) -> (N, J). Index -1 (nothing there) reads entry 0, which is then unused."""
    index = ops.maximum(index, 0)
    if len(index.shape) == 2:
        return ops.take_along_axis(x, index, axis=1)
    if len(x.shape) == 2:
        return ops.take_along_axis(x, index[:, None], axis=1)[:, 0]
    # An index of x's shape: take_along_axis's own broadcast fails for an open axis of size 0 under XLA.
    index = ops.broadcast_to(index[:, None, None], (dim(x, 0), 1, dim(x, 2)))
    return ops.take_along_axis(x, index, axis=1)[:, 0]


def _first_true(x):
    """Index of the first True along axis 1: (N, K) bool -> (N,) int32 (0 where none)."""
    return ops.cast(ops.argmax(ops.cast(x, "int32"), axis=1), "int32")


def _solve_rows(cost, row_valid, col_valid):
    """Shortest augmenting path assignment (scipy's algorithm), lockstep over N problems.

    Every valid row is assigned, one augmentation per row; each problem needs
    #valid rows <= #valid columns. Rows and columns that are not valid are never used.

    Args:
        cost: (N, R, C) float32, finite. row_valid: (N, R) bool. col_valid: (N, C) bool.
    Returns:
        col4row (N, R) and row4col (N, C) int32, -1 where unassigned.
    """
    num_problems, num_rows, num_cols = dim(cost, 0), dim(cost, 1), dim(cost, 2)
    row_ids = ops.arange(num_rows, dtype="int32")[None]
    col_ids = ops.arange(num_cols, dtype="int32")[None]
    inf = float("inf")

    def augment(cur_row, u, v, col4row, row4col):
        first_row = ops.zeros((num_problems,), "int32") + cur_row
        active = _gather_rows(row_valid, first_row)

        def search_step(spc, path, row_seen, col_seen, min_val, row, sink, done):
            # Relax the edges of `row`, then settle the closest open column (Dijkstra on reduced costs).
            reduced = min_val[:, None] + _gather_rows(cost, row) - _gather_rows(u, row)[:, None] - v
            open_cols = col_valid & ~col_seen & ~done[:, None]
            better = open_cols & (reduced < spc)
            path = ops.where(better, row[:, None], path)
            spc = ops.where(better, reduced, spc)
            open_cost = ops.where(open_cols, spc, inf)
            lowest = ops.min(open_cost, axis=1)
            ties = open_cols & (open_cost == lowest[:, None])
            free_ties = ties & (row4col < 0)  # among equals prefer a free column, as scipy does
            col = ops.where(ops.any(free_ties, axis=1), _first_true(free_ties), _first_true(ties))
            step = ~done & (lowest < inf)  # lowest == inf: infeasible (cannot happen when counts fit)
            col_seen = col_seen | ((col_ids == col[:, None]) & step[:, None])
            owner = _gather_rows(row4col, col)
            found = step & (owner < 0)
            sink = ops.where(found, col, sink)
            min_val = ops.where(step, lowest, min_val)
            next_row = ops.where(step & ~found, owner, row)
            row_seen = row_seen | ((row_ids == next_row[:, None]) & (step & ~found)[:, None])
            return spc, path, row_seen, col_seen, min_val, next_row, sink, done | ~step | found

        state = (
            ops.full((num_problems, num_cols), inf, "float32"),
            ops.full((num_problems, num_cols), -1, "int32"),
            (row_ids == cur_row) & active[:, None],
            ops.zeros((num_problems, num_cols), "bool"),
            ops.zeros((num_problems,), "float32"),
            first_row,
            ops.full((num_problems,), -1, "int32"),
            ~active,
        )
        spc, path, row_seen, col_seen, min_val, _, sink, _ = ops.while_loop(
            lambda *s: ops.any(~s[-1]), search_step, state, maximum_iterations=num_cols
        )
        augmented = sink >= 0

        # Dual update (before augmenting: it reads the current col4row).
        spc_of_row = _gather_rows(spc, col4row)
        du = ops.where(row_seen, min_val[:, None] - spc_of_row, 0.0)
        du = ops.where(row_ids == cur_row, min_val[:, None], du)
        u = u + ops.where(augmented[:, None], du, 0.0)
        v = v - ops.where(augmented[:, None] & col_seen, min_val[:, None] - spc, 0.0)

        # Flip the alternating path from the sink back to the current row.
        def flip_step(col, col4row, row4col, going):
            row = _gather_rows(path, col)
            row4col = ops.where(going[:, None] & (col_ids == col[:, None]), row[:, None], row4col)
            previous = _gather_rows(col4row, row)
            col4row = ops.where(going[:, None] & (row_ids == row[:, None]), col[:, None], col4row)
            return ops.where(going, previous, col), col4row, row4col, going & (row != cur_row)

        _, col4row, row4col, _ = ops.while_loop(
            lambda *s: ops.any(s[-1]),
            flip_step,
            (sink, col4row, row4col, augmented),
            maximum_iterations=num_rows,
        )
        return cur_row + 1, u, v, col4row, row4col

    init = (
        ops.convert_to_tensor(0, "int32"),
        ops.zeros((num_problems, num_rows), "float32"),
        ops.zeros((num_problems, num_cols), "float32"),
        ops.full((num_problems, num_rows), -1, "int32"),
        ops.full((num_problems, num_cols), -1, "int32"),
    )
    _, _, _, col4row, row4col = ops.while_loop(lambda r, *_: r < num_rows, augment, init)
    return col4row, row4col


def linear_sum_assignment_device(cost, row_valid=None, col_valid=None):
    """Optimal assignment of each problem's valid rows and columns, in `keras.ops` (XLA-ready).

    Problems are padded to square and transposed where they have more valid rows than columns, so
    all of them are solved together.

    Args:
        cost: (N, R, C) float (C may be unknown when traced by TensorFlow).
        row_valid: (N, R) bool, default all. col_valid: (N, C) bool, default all.
    Returns:
        (N, R) int32: the column assigned to each row, -1 where none.
    """
    num_rows, num_cols = dim(cost, 1), dim(cost, 2)
    row_valid, col_valid = _masks_or_all(cost, row_valid, col_valid)
    static = isinstance(num_rows, int) and isinstance(num_cols, int)
    # At least 1: XLA compiles the loops' bodies even where they never run, and an argmax over 0 columns fails.
    size = max(num_rows, num_cols, 1) if static else ops.maximum(ops.maximum(num_rows, num_cols), 1)
    cost = ops.stop_gradient(ops.cast(cost, "float32"))
    cost = ops.where(ops.isfinite(cost), cost, NONFINITE_COST)
    cost = ops.pad(cost, [[0, 0], [0, size - num_rows], [0, size - num_cols]])
    row_valid = ops.pad(row_valid, [[0, 0], [0, size - num_rows]])
    col_valid = ops.pad(col_valid, [[0, 0], [0, size - num_cols]])
    count = lambda x: ops.sum(ops.cast(x, "int32"), axis=1)  # noqa: E731
    flip = count(row_valid) > count(col_valid)  # solve the transpose: its rows are the smaller side
    col4row, row4col = _solve_rows(
        ops.where(flip[:, None, None], ops.transpose(cost, (0, 2, 1)), cost),
        ops.where(flip[:, None], col_valid, row_valid),
        ops.where(flip[:, None], row_valid, col_valid),
    )
    return ops.where(flip[:, None], row4col, col4row)[:, :num_rows]


# -------------------------------------------------------------------------------------------- host
def _scipy_assign(cost: np.ndarray, row_valid: np.ndarray, col_valid: np.ndarray) -> np.ndarray:
    """`linear_sum_assignment_host` in NumPy: (N, R, C), (N, R), (N, C) -> (N, R) int32."""
    cost = np.where(np.isfinite(cost), cost, NONFINITE_COST)
    row_to_col = np.full(cost.shape[:2], -1, np.int32)
    for b in range(cost.shape[0]):
        rows, cols = np.flatnonzero(row_valid[b]), np.flatnonzero(col_valid[b])
        r, c = scipy.optimize.linear_sum_assignment(cost[b][np.ix_(rows, cols)])
        row_to_col[b, rows[r]] = cols[c]
    return row_to_col


def linear_sum_assignment_host(cost, row_valid=None, col_valid=None):
    """scipy's optimal assignment of each problem's valid rows and columns, on the host.

    Inside compiled code through the backend's host callback (`tf.numpy_function`, which XLA cannot
    compile; `jax.pure_callback`, which copies the costs to the host and back); a NumPy call on PyTorch.

    Args:
        cost: (N, R, C) float. row_valid: (N, R) bool, default all. col_valid: (N, C) bool, default all.
    Returns:
        (N, R) int32: the column assigned to each row, -1 where none.
    """
    cost = ops.stop_gradient(ops.convert_to_tensor(cost))
    row_valid, col_valid = _masks_or_all(cost, row_valid, col_valid)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        row_to_col = tf.numpy_function(_scipy_assign, [cost, row_valid, col_valid], tf.int32, stateful=False)
        return tf.ensure_shape(row_to_col, cost.shape[:2])
    if backend == "jax":
        import jax

        result = jax.ShapeDtypeStruct(cost.shape[:2], np.int32)
        return jax.pure_callback(_scipy_assign, result, cost, row_valid, col_valid, vmap_method="sequential")
    if backend == "torch":
        import torch

        arrays = [ops.convert_to_numpy(x) for x in (cost, row_valid, col_valid)]
        return torch.as_tensor(_scipy_assign(*arrays), device=cost.device)
    raise ValueError(
        f"losses/assignment.py: no host solver for Keras backend {backend!r}; use tensorflow, jax or torch"
    )


# "tf" is the name older configs give the device solver (config.loss.matcher).
ASSIGNMENT_BACKENDS = {
    "scipy": linear_sum_assignment_host,
    "device": linear_sum_assignment_device,
    "tf": linear_sum_assignment_device,
}

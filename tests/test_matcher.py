"""The device Hungarian algorithm reaches scipy's optimum on 1,010 random problems, under XLA; the
pairwise matching costs equal the official formulas in float64. (tests/test_assignment.py runs both
solvers on JAX and PyTorch too.)"""

import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf

from losses.assignment import linear_sum_assignment_device, linear_sum_assignment_host
from losses.matcher import HungarianMatcher, pairwise_costs

SIZE = 100


def random_problems(seed=0):
    """For every n in 0..100: 100 x n, n x 100 and n x n problems, continuous and with many ties.

    All are padded to 100 x 100 with row / column validity masks (scattered, not only trailing).
    """
    rng = np.random.default_rng(seed)
    costs, row_valid, col_valid = [], [], []
    for n in range(SIZE + 1):
        for rows, cols, kind in [
            (SIZE, n, "uniform"),
            (SIZE, n, "ties"),
            (n, SIZE, "uniform"),
            (n, n, "ties"),
            (n, SIZE, "constant"),
            (SIZE, n, "wide"),
            (n, n, "uniform"),
            (rng.integers(0, SIZE + 1), n, "ties"),
            (n, rng.integers(0, SIZE + 1), "uniform"),
            (SIZE, SIZE, "ties" if n % 2 else "uniform"),
        ]:
            if kind == "uniform":
                cost = rng.uniform(size=(SIZE, SIZE))
            elif kind == "ties":
                cost = rng.integers(0, 4, size=(SIZE, SIZE))
            elif kind == "constant":
                cost = np.full((SIZE, SIZE), 2.5)
            else:  # matching costs span a few orders of magnitude
                cost = rng.uniform(-20, 20, size=(SIZE, SIZE)) * 10.0 ** rng.integers(-3, 2, size=(SIZE, 1))
            costs.append(cost.astype(np.float32))
            row_valid.append(np.isin(np.arange(SIZE), rng.permutation(SIZE)[:rows]))
            col_valid.append(np.isin(np.arange(SIZE), rng.permutation(SIZE)[:cols]))
    return np.stack(costs), np.stack(row_valid), np.stack(col_valid)


def check_optimal(row_to_col, costs, row_valid, col_valid):
    for b in range(len(costs)):
        rows, cols = np.flatnonzero(row_valid[b]), np.flatnonzero(col_valid[b])
        sub = costs[b][np.ix_(rows, cols)].astype(np.float64)
        r, c = scipy.optimize.linear_sum_assignment(sub)
        assigned = np.flatnonzero(row_to_col[b] >= 0)
        cols_used = row_to_col[b, assigned]
        assert len(assigned) == min(len(rows), len(cols)), f"problem {b}: wrong number of pairs"
        assert row_valid[b, assigned].all() and col_valid[b, cols_used].all(), f"problem {b}: invalid pair"
        assert len(set(cols_used)) == len(cols_used), f"problem {b}: a column used twice"
        total = costs[b].astype(np.float64)[assigned, cols_used].sum()
        np.testing.assert_allclose(total, sub[r, c].sum(), rtol=1e-6, atol=1e-5, err_msg=f"problem {b}")


def test_device_hungarian_reaches_scipy_optimum_under_xla():
    costs, row_valid, col_valid = random_problems()
    assert len(costs) >= 1000
    solve = tf.function(linear_sum_assignment_device, jit_compile=True)
    row_to_col = solve(tf.constant(costs), tf.constant(row_valid), tf.constant(col_valid)).numpy()
    check_optimal(row_to_col, costs, row_valid, col_valid)


def test_scipy_backend_in_a_graph_and_empty_problems():
    costs, row_valid, col_valid = random_problems(seed=1)
    picked = slice(0, 60)
    solve = tf.function(linear_sum_assignment_host)
    row_to_col = solve(costs[picked], row_valid[picked], col_valid[picked]).numpy()
    check_optimal(row_to_col, costs[picked], row_valid[picked], col_valid[picked])
    # 100 x 0: nothing to assign, in both back ends.
    empty = np.zeros((2, SIZE, 0), np.float32)
    for solver in (linear_sum_assignment_device, linear_sum_assignment_host):
        assert (np.asarray(solver(empty, np.ones((2, SIZE), bool), np.ones((2, 0), bool))) == -1).all()


def test_matcher_takes_non_finite_costs_last():
    cost = np.array([[[np.nan, 1.0], [2.0, np.inf]]], np.float32)
    for backend in ("device", "scipy"):
        assignment = HungarianMatcher(backend=backend).assign(tf.constant(cost), tf.ones([1, 2], tf.bool))
        np.testing.assert_array_equal(assignment, [[1, 0]])
    with pytest.raises(ValueError, match="backend"):
        HungarianMatcher(backend="lapjv")


def test_pairwise_costs_equal_the_official_two_matmul_formulas():
    """transformers' pair_wise_sigmoid_cross_entropy_loss and pair_wise_dice_loss, in float64 NumPy."""
    rng = np.random.default_rng(1)
    pred = (rng.normal(size=(2, 500, 7)) * 6).astype(np.float32)  # (B, P, Q) logits, some saturated
    target = (rng.uniform(size=(2, 500, 3)) < 0.3).astype(np.float32)  # (B, P, M)
    x, t = pred.astype(np.float64), target.astype(np.float64)
    pos, neg = np.logaddexp(0, -x), np.logaddexp(0, x)  # BCE with target 1 and with target 0
    sigmoid_ce = (np.einsum("bpq,bpm->bqm", pos, t) + np.einsum("bpq,bpm->bqm", neg, 1 - t)) / x.shape[1]
    prob = 1 / (1 + np.exp(-x))
    dice = 1 - (2 * np.einsum("bpq,bpm->bqm", prob, t) + 1) / (prob.sum(1)[:, :, None] + t.sum(1)[:, None] + 1)
    ours_ce, ours_dice = pairwise_costs(*(tf.transpose(tf.constant(x), [0, 2, 1]) for x in (pred, target)))
    np.testing.assert_allclose(ours_ce, sigmoid_ce, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours_dice, dice, rtol=1e-5, atol=1e-6)

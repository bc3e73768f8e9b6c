"""Both assignment solvers reach scipy's minimum total cost on every backend: TensorFlow in this process
(eagerly, traced with the column axis open, under XLA), JAX (`jax.jit`) and PyTorch in one subprocess each.

The problems: continuous costs, integer costs from a tiny range and all-equal matrices (many optima),
scattered invalid rows and columns, non-finite entries, problems with no valid row or column, and
empty shapes (R x 0, 0 x C, 0 x 0). Where several assignments are optimal the device solver may pick
another one than scipy; the tests print how often it picks scipy's own.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import scipy.optimize

from losses.assignment import (
    ASSIGNMENT_BACKENDS,
    NONFINITE_COST,
    linear_sum_assignment_device,
    linear_sum_assignment_host,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {"JAX_PLATFORMS": "cpu", "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
SHAPES = {"wide": (5, 9), "tall": (9, 5), "square": (7, 7), "large": (30, 45), "rows_only": (4, 0)}
SHAPES.update({"cols_only": (0, 4), "nothing": (0, 0)})

# Runs every solver on every problem set of problems.npz under the subprocess's KERAS_BACKEND.
RUN = """
import sys, keras, numpy as np
from losses.assignment import ASSIGNMENT_BACKENDS
problems = np.load(sys.argv[1])
backend = keras.backend.backend()
results = {}
for solver in ("device", "scipy"):
    solve = ASSIGNMENT_BACKENDS[solver]
    if backend == "jax":
        import jax
        solve = jax.jit(solve)
    for name in sys.argv[3:]:
        args = [keras.ops.convert_to_tensor(problems[f"{name}/{key}"]) for key in ("cost", "row_valid", "col_valid")]
        results[f"{solver}/{name}"] = keras.ops.convert_to_numpy(solve(*args))
np.savez(sys.argv[2], backend=backend, **results)
"""


def problem_set(rows, cols, rng):
    """(N, rows, cols) float32 costs with (N, rows) and (N, cols) validity masks, one kind per problem."""
    costs, row_valid, col_valid = [], [], []
    for kind in (
        ["uniform"] * 4
        + ["scattered"] * 3
        + ["nan", "inf", "-inf", "ties", "ties", "binary"]
        + [
            "constant",
            "no rows",
            "no columns",
        ]
    ):
        cost = rng.uniform(-1, 3, (rows, cols))
        valid_rows, valid_cols = np.ones(rows, bool), np.ones(cols, bool)
        if kind in ("scattered", "ties"):  # about a third of the rows and columns invalid
            valid_rows, valid_cols = rng.uniform(size=rows) > 0.3, rng.uniform(size=cols) > 0.3
        if kind in ("nan", "inf", "-inf") and cost.size:
            cost[rng.integers(rows), rng.integers(cols)] = float(kind)
        if kind in ("ties", "binary"):
            cost = rng.integers(0, 3 if kind == "ties" else 2, (rows, cols))
        if kind == "constant":
            cost = np.full((rows, cols), 2.5)
        valid_rows &= kind != "no rows"
        valid_cols &= kind != "no columns"
        costs.append(cost.astype(np.float32))
        row_valid.append(valid_rows)
        col_valid.append(valid_cols)
    return np.stack(costs), np.stack(row_valid), np.stack(col_valid)


@pytest.fixture(scope="module")
def problems():
    rng = np.random.default_rng(0)
    return {name: problem_set(rows, cols, rng) for name, (rows, cols) in SHAPES.items()}


def check_optimal(row_to_col, costs, row_valid, col_valid, label):
    """Asserts a valid assignment of minimum total cost in every problem (non-finite costs count as
    NONFINITE_COST); returns how many problems got scipy's own assignment."""
    assert row_to_col.shape == costs.shape[:2] and row_to_col.dtype == np.int32, label
    costs = np.where(np.isfinite(costs), costs, NONFINITE_COST).astype(np.float64)
    same = 0
    for b in range(len(costs)):
        rows, cols = np.flatnonzero(row_valid[b]), np.flatnonzero(col_valid[b])
        r, c = scipy.optimize.linear_sum_assignment(costs[b][np.ix_(rows, cols)])
        scipy_row_to_col = np.full(costs.shape[1], -1)
        scipy_row_to_col[rows[r]] = cols[c]
        assigned = np.flatnonzero(row_to_col[b] >= 0)
        cols_used = row_to_col[b, assigned]
        where = f"{label}, problem {b}"
        assert len(assigned) == len(r), f"{where}: {len(assigned)} pairs, scipy {len(r)}"
        assert row_valid[b, assigned].all() and col_valid[b, cols_used].all(), f"{where}: an invalid pair"
        assert len(set(cols_used)) == len(cols_used), f"{where}: a column used twice"
        total, optimum = costs[b][assigned, cols_used].sum(), costs[b][rows[r], cols[c]].sum()
        np.testing.assert_allclose(total, optimum, rtol=1e-6, atol=1e-5, err_msg=where)
        same += bool((row_to_col[b] == scipy_row_to_col).all())
    return same


def check_all(results, problems, label):
    """check_optimal on every result, {(solver, problem set): (N, R) int32}; scipy's own solver must
    give exactly scipy's assignment. Prints how often the device solver does."""
    for solver in sorted({solver for solver, _ in results}):
        same = total = 0
        for name, (costs, row_valid, col_valid) in problems.items():
            same += check_optimal(results[solver, name], costs, row_valid, col_valid, f"{label} {solver} {name}")
            total += len(costs)
        print(f"{label} {solver}: scipy's own assignment in {same} of {total} problems")
        if solver == "scipy":
            assert same == total, f"{label}: the host solver is not scipy's assignment"


def test_tensorflow_eager_open_columns_and_xla(problems):
    import tensorflow as tf

    def open_columns(solve, costs, jit_compile=False):  # traced once with the column axis unknown
        n, r = costs.shape[:2]
        signature = [
            tf.TensorSpec([n, r, None], tf.float32),
            tf.TensorSpec([n, r], tf.bool),
            tf.TensorSpec([n, None], tf.bool),
        ]
        return tf.function(solve, input_signature=signature, jit_compile=jit_compile)

    modes = {
        "eager": (lambda solve, costs: solve, ("device", "scipy")),
        "graph": (open_columns, ("device", "scipy")),
        "xla": (lambda solve, costs: open_columns(solve, costs, jit_compile=True), ("device",)),  # no host callback
    }
    for mode, (wrap, solvers) in modes.items():
        results = {}
        for solver in solvers:
            for name, args in problems.items():
                solve = wrap(ASSIGNMENT_BACKENDS[solver], args[0])
                results[solver, name] = solve(*[tf.constant(a) for a in args]).numpy()
        check_all(results, problems, f"tensorflow {mode}")


@pytest.fixture(scope="module")
def backend_runs(problems, tmp_path_factory):
    """One subprocess per installed other backend, started together, solving every problem set."""
    tmp = tmp_path_factory.mktemp("assignment")
    arrays = {
        f"{name}/{key}": a for name, p in problems.items() for key, a in zip(("cost", "row_valid", "col_valid"), p, strict=False)
    }
    np.savez(tmp / "problems.npz", **arrays)
    runs = {}
    for backend in ("jax", "torch"):
        if importlib.util.find_spec(backend) is not None:
            env = {**os.environ, "KERAS_BACKEND": backend, **ENV}
            command = [sys.executable, "-c", RUN, str(tmp / "problems.npz"), str(tmp / f"{backend}.npz"), *problems]
            runs[backend] = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
    yield tmp, runs
    for process in runs.values():  # a failed test's subprocess is not left running
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends(backend_runs, problems, backend):
    tmp, runs = backend_runs
    if backend not in runs:
        pytest.skip(f"{backend} is not installed")
    output = runs[backend].communicate(timeout=600)[0].decode()
    assert runs[backend].returncode == 0, output[-3000:]
    got = np.load(tmp / f"{backend}.npz")
    assert str(got["backend"]) == backend
    results = {(solver, name): got[f"{solver}/{name}"] for solver in ("device", "scipy") for name in problems}
    check_all(results, problems, backend)


def test_old_name_and_defaults():
    assert ASSIGNMENT_BACKENDS["tf"] is ASSIGNMENT_BACKENDS["device"] is linear_sum_assignment_device
    cost = np.array([[[np.nan, 1.0], [2.0, np.inf]]], np.float32)  # non-finite costs are taken last
    for solve in (linear_sum_assignment_device, linear_sum_assignment_host):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(solve(cost)), [[1, 0]])

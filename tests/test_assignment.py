"""Both assignment solvers reach scipy's minimum total cost on every backend: TensorFlow in this process
(eagerly, traced with the column axis open, under XLA), JAX (`jax.jit`) and PyTorch in one subprocess each.

The problems: continuous costs (also spanning orders of magnitude), integer costs from a tiny range
and all-equal matrices (many optima), scattered invalid rows and columns, non-finite entries, problems
with no valid row or column, and empty shapes (R x 0, 0 x C, 0 x 0). Where several assignments are
optimal the device solver may pick another one than scipy; the tests print how often it picks scipy's,
and the slow test asserts that it picks the same one on every backend.
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
ARRAYS = ("cost", "row_valid", "col_valid")
# (rows, columns) of each problem set; sets with the same row count share one TensorFlow trace.
SHAPES = {
    "wide": (6, 9),
    "tall": (6, 4),
    "square": (6, 6),
    "no_columns": (6, 0),
    "large": (30, 45),
    "no_rows": (0, 4),
    "nothing": (0, 0),
}
# What the default suite compiles: a trace costs ~1 s, an XLA compilation 2-4 s (eager TF: 5 s for
# "large"). The slow test runs every set everywhere, and 240 problems of up to 100 x 100.
QUICK = {
    "tensorflow eager": [name for name in SHAPES if name != "large"],
    "tensorflow graph": list(SHAPES),
    "tensorflow xla": ["tall", "nothing"],  # the training step's shape; an open axis of size 0
    "jax": ["wide", "tall", "no_columns", "no_rows", "nothing"],
    "torch": list(SHAPES),
}

# Every solver on the named problem sets of problems.npz, under the subprocess's KERAS_BACKEND.
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

KINDS = ["uniform"] * 3 + ["scales", "scattered", "scattered", "nan", "inf", "-inf"]
KINDS += ["ties", "ties", "binary", "constant", "no valid row", "no valid column"]


def problem(kind, rows, cols, rng):
    """One (rows, cols) float32 cost matrix of the given kind, with its row and column validity."""
    cost = rng.uniform(-1, 3, (rows, cols))
    if kind == "scales":  # as matching costs: rows a few orders of magnitude apart
        cost = rng.uniform(-20, 20, (rows, cols)) * 10.0 ** rng.integers(-3, 2, (rows, 1))
    if kind in ("nan", "inf", "-inf") and cost.size:
        cost[rng.integers(rows), rng.integers(cols)] = float(kind)
    if kind in ("ties", "binary"):
        cost = rng.integers(0, 3 if kind == "ties" else 2, (rows, cols))
    if kind == "constant":
        cost = np.full((rows, cols), 2.5)
    valid_rows, valid_cols = np.ones(rows, bool), np.ones(cols, bool)
    if kind in ("scattered", "ties"):  # about a third of the rows and columns invalid
        valid_rows, valid_cols = rng.uniform(size=rows) > 0.3, rng.uniform(size=cols) > 0.3
    return cost.astype(np.float32), valid_rows & (kind != "no valid row"), valid_cols & (kind != "no valid column")


def stack(problems):
    return tuple(np.stack(arrays) for arrays in zip(*problems, strict=True))


def problem_sets(slow=False):
    """{name: (N, R, C) float32 costs, (N, R) and (N, C) bool validity}: every kind in every shape;
    with `slow`, also "many": 240 problems of 100 x 100 with 0-100 valid rows and columns."""
    rng = np.random.default_rng(0)
    sets = {name: stack(problem(kind, *shape, rng) for kind in KINDS) for name, shape in SHAPES.items()}
    if slow:
        many = []
        for _ in range(240):
            cost, _, _ = problem(rng.choice(["uniform", "scales", "ties", "binary", "nan"]), 100, 100, rng)
            valid_rows, valid_cols = (np.isin(np.arange(100), rng.permutation(100)[: rng.integers(101)]) for _ in "rc")
            many.append((cost, valid_rows, valid_cols))
        sets["many"] = stack(many)
    return sets


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
    """check_optimal on every result, {(solver, set name): (N, R) int32}; scipy's own solver must give
    exactly scipy's assignment. Prints how often the device solver does."""
    for solver in sorted({solver for solver, _ in results}):
        names = [name for s, name in results if s == solver]
        same = sum(check_optimal(results[solver, n], *problems[n], f"{label} {solver} {n}") for n in names)
        total = sum(len(problems[n][0]) for n in names)
        print(f"{label} {solver}: scipy's own assignment in {same} of {total} problems ({', '.join(names)})")
        if solver == "scipy":
            assert same == total, f"{label}: the host solver is not scipy's assignment"


def run_tensorflow(problems, names):
    """{mode: {(solver, set name): result}} for eager, graph (traced with the column axis open, as the
    training step is) and XLA (device solver only: XLA cannot compile a host callback)."""
    import tensorflow as tf

    traced = {}

    def open_columns(solver, costs, jit_compile):  # one trace per solver, row count and mode
        n, r = costs.shape[:2]
        key = solver, n, r, jit_compile
        if key not in traced:
            signature = [tf.TensorSpec([n, r, None]), tf.TensorSpec([n, r], tf.bool), tf.TensorSpec([n, None], tf.bool)]
            traced[key] = tf.function(ASSIGNMENT_BACKENDS[solver], input_signature=signature, jit_compile=jit_compile)
        return traced[key]

    results = {}
    for mode, solvers in (("eager", ("device", "scipy")), ("graph", ("device", "scipy")), ("xla", ("device",))):
        results[mode] = {}
        for solver in solvers:
            for name in names[f"tensorflow {mode}"]:
                args = [tf.constant(a) for a in problems[name]]
                solve = ASSIGNMENT_BACKENDS[solver] if mode == "eager" else open_columns(solver, args[0], mode == "xla")
                results[mode][solver, name] = solve(*args).numpy()
    return results


def start_backends(problems, names, folder):
    """One subprocess per installed other backend, started together: {backend: Popen}."""
    np.savez(
        folder / "problems.npz", **{f"{n}/{k}": a for n, p in problems.items() for k, a in zip(ARRAYS, p, strict=True)}
    )
    runs = {}
    for backend in ("jax", "torch"):
        if importlib.util.find_spec(backend) is not None:
            env = {**os.environ, "KERAS_BACKEND": backend, **ENV}
            command = [sys.executable, "-c", RUN, str(folder / "problems.npz"), str(folder / f"{backend}.npz")]
            runs[backend] = subprocess.Popen(
                [*command, *names[backend]], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
    return runs


def backend_results(runs, backend, names, folder):
    """{(solver, set name): result} of a subprocess started by `start_backends`."""
    output = runs[backend].communicate(timeout=900)[0].decode()
    assert runs[backend].returncode == 0, output[-3000:]
    got = np.load(folder / f"{backend}.npz")
    assert str(got["backend"]) == backend
    return {(solver, name): got[f"{solver}/{name}"] for solver in ("device", "scipy") for name in names[backend]}


def stop(runs):
    """Ends the subprocesses still running (those of a failed test)."""
    for process in runs.values():
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """The default suite's problem sets, and its subprocesses (started before the TensorFlow test)."""
    folder = tmp_path_factory.mktemp("assignment")
    problems = problem_sets()
    runs = start_backends(problems, QUICK, folder)
    yield problems, runs, folder
    stop(runs)


def test_tensorflow_eager_open_columns_and_xla(quick_runs):
    problems = quick_runs[0]
    for mode, results in run_tensorflow(problems, QUICK).items():
        check_all(results, problems, f"tensorflow {mode}")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends(quick_runs, backend):
    problems, runs, folder = quick_runs
    if backend not in runs:
        pytest.skip(f"{backend} is not installed")
    check_all(backend_results(runs, backend, QUICK, folder), problems, backend)


@pytest.mark.slow
def test_every_set_on_every_backend_and_large_problems(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assignment_slow")
    problems = problem_sets(slow=True)
    names = {label: list(problems) for label in QUICK}
    names["tensorflow eager"] = list(SHAPES)  # eager TensorFlow would take minutes on "many"
    runs = start_backends(problems, names, folder)
    try:
        results = {f"tensorflow {mode}": r for mode, r in run_tensorflow(problems, names).items()}
        results.update({backend: backend_results(runs, backend, names, folder) for backend in runs})
    finally:
        stop(runs)
    for label, result in results.items():
        check_all(result, problems, label)
        for key, row_to_col in result.items():  # the same algorithm: the same choice among optima everywhere
            np.testing.assert_array_equal(row_to_col, results["tensorflow graph"][key], err_msg=f"{label} {key}")


def test_old_name_and_defaults():
    assert ASSIGNMENT_BACKENDS["tf"] is ASSIGNMENT_BACKENDS["device"] is linear_sum_assignment_device
    cost = np.array([[[np.nan, 1.0], [2.0, np.inf]]], np.float32)  # non-finite costs are taken last
    for solve in (linear_sum_assignment_device, linear_sum_assignment_host):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(solve(cost)), [[1, 0]])

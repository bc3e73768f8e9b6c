"""The optimal assignment alone: the device solver against scipy on the host, on the current Keras backend.

    KERAS_BACKEND=jax JAX_PLATFORMS=cpu python -m bench.bench_assignment
    KERAS_BACKEND=tensorflow python -m bench.bench_assignment --problems 20 --repeats 20

Uniform random costs, all rows and columns valid, N problems of 100 queries x 16 and x 128 targets.
For each shape prints the median wall-clock and process CPU milliseconds of a call, after one warm-up
call (the compilation), of: `linear_sum_assignment_device` compiled as the backend compiles a training
step (`jax.jit`, `tf.function(jit_compile=True)`; eager on PyTorch), `linear_sum_assignment_host` in the
same way (its scipy call through the backend's host callback; TensorFlow traces it without XLA), and
scipy on NumPy arrays with no framework around it.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import keras
import numpy as np

from losses.assignment import _scipy_assign, linear_sum_assignment_device, linear_sum_assignment_host


def compiled(solve, jit_compile: bool):
    """`solve` compiled as the backend compiles a training step (eager on PyTorch), and how."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(solve), "jax.jit"
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(solve, jit_compile=jit_compile), "XLA" if jit_compile else "tf.function"
    return solve, "eager"


def run(solve, inputs) -> np.ndarray:
    return keras.ops.convert_to_numpy(solve(*inputs))


def median_ms(call, repeats: int) -> tuple[float, float]:
    """Median wall-clock and process CPU milliseconds of `call()` over `repeats` runs after a warm-up."""
    call()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def total_cost(cost: np.ndarray, row_to_col: np.ndarray) -> float:
    """Sum of the assigned costs: (N, R, C), (N, R) column or -1."""
    picked = np.take_along_axis(cost, np.maximum(row_to_col, 0)[..., None], axis=2)[..., 0]
    return float(np.where(row_to_col >= 0, picked, 0.0).sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=10, help="N: problems solved together")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--targets", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    device, device_mode = compiled(linear_sum_assignment_device, jit_compile=True)
    host, host_mode = compiled(linear_sum_assignment_host, jit_compile=False)
    print(f"backend {keras.backend.backend()}, {args.problems} problems, median of {args.repeats} runs (ms)")
    print(f"{'shape':>10} {'solver':>28} {'wall':>8} {'cpu':>8}")
    for targets in args.targets:
        cost = rng.uniform(size=(args.problems, args.queries, targets)).astype(np.float32)
        rows, cols = np.ones(cost.shape[:2], bool), np.ones(cost.shape[::2], bool)
        tensors = [keras.ops.convert_to_tensor(a) for a in (cost, rows, cols)]
        expected = _scipy_assign(cost, rows, cols)
        timed = {
            f"device, {device_mode}": (device, tensors),
            f"host, {host_mode}": (host, tensors),
            "scipy on NumPy": (_scipy_assign, (cost, rows, cols)),
        }
        for name, (solve, inputs) in timed.items():
            call = functools.partial(run, solve, inputs)
            assert np.isclose(total_cost(cost, call()), total_cost(cost, expected)), f"{name}: not optimal"
            wall, cpu = median_ms(call, args.repeats)
            print(f"{args.queries:>5} x {targets:<3} {name:>28} {wall:8.2f} {cpu:8.2f}")


if __name__ == "__main__":
    main()

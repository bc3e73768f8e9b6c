"""What every ours-against-the-reference benchmark shares: 2 threads each, torch with
OMP_WAIT_POLICY=PASSIVE, interleaved A B A B rounds with medians, peak memory of a fresh process.

    from bench.harness import run_main              # in bench/NAME.py, after `def build(args, which)`
    run_main(__file__, parser, build, describe)     # parses, times ours / reference, prints ratios

Importing this module sets OMP_WAIT_POLICY before torch is imported (import it first), and malloc's
reuse of freed memory as every script sets it (`cli.reuse_freed_memory`; it applies to the whole
process, so to both sides alike).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["OMP_WAIT_POLICY"] = (
    "PASSIVE"  # before torch starts its threads (its spinning default halves its speed here)
)
THREADS = 2
ROOT = Path(__file__).resolve().parents[1]
import cli  # noqa: E402

cli.reuse_freed_memory()


def _status_gb(field: str) -> float | None:
    """A memory field of /proc/self/status (Linux) in GB, or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None


def resident_gb() -> float | None:
    """This process's resident memory now in GB (VmRSS; None off Linux)."""
    return _status_gb("VmRSS")


def peak_resident_gb() -> float:
    """This process's peak resident memory in GB. Linux: VmHWM of /proc/self/status, which starts anew at
    exec; `ru_maxrss` does not (it keeps the parent's peak at fork), so a child of a large parent would
    report at least the parent's size."""
    peak = _status_gb("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # elsewhere: KiB (macOS: bytes)


def set_tensorflow_threads():
    """TensorFlow on THREADS intra- and inter-op threads (for benches that run no torch)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)


def set_threads():
    """Both frameworks on THREADS intra- and inter-op threads."""
    import torch

    set_tensorflow_threads()
    torch.set_num_threads(THREADS)


def interleaved(runs: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Calls each of `runs` in turn (A B A B ...); returns the times after `warmup` rounds."""
    times = {name: [] for name in runs}
    for i in range(warmup + repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            print(f"  round {i} {'(warm-up) ' if i < warmup else ''}{name}: {seconds:.2f} s", flush=True)
            if i >= warmup:
                times[name].append(seconds)
    return times


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn` after one warm-up call (tracing, compilation)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> str:
    """Processor, core count and the 1-minute load average (the machine is shared)."""
    load = os.getloadavg()[0]
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, load {load:.1f}"


def fresh_process(script: str) -> list[str]:
    """The command that runs bench/NAME.py (`script`, a path) in a fresh process: `python -m bench.NAME`, to be
    run with cwd=ROOT (the benches import the project as packages from the repository root)."""
    return [sys.executable, "-m", f"bench.{Path(script).stem}"]


def add_common_arguments(parser: argparse.ArgumentParser, warmup: int, repeats: int):
    """--warmup, --repeats, --seed, --memory and the hidden --child of a fresh memory process."""
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory", action="store_true", help="also peak memory of each in a fresh process")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)


def measure_memory(script: str, args, which: str) -> float:
    """Peak resident memory (GB) of a fresh process of `script` running `which` warm-up + 1 times."""
    argv = (
        fresh_process(script)
        + ["--child", which]
        + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("child", "memory")]
    )
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["max_rss_gb"]


def run_main(script: str, parser: argparse.ArgumentParser, build, describe: str):
    """Parses args; times `build(args, "ours")()` against `build(args, "reference")()` interleaved
    (or, with --child, runs one of them in this process and prints its peak memory)."""
    args = parser.parse_args()
    set_threads()
    if args.child:
        run = build(args, args.child)
        for _ in range(args.warmup + 1):
            run()
        print(json.dumps({"max_rss_gb": peak_resident_gb()}))
        return
    runs = {"ours": build(args, "ours"), "reference": build(args, "reference")}
    times = interleaved(runs, args.warmup, args.repeats)
    ours, ref = (statistics.median(times[k]) for k in ("ours", "reference"))
    print(f"machine: {machine()}; {THREADS} threads each, torch OMP_WAIT_POLICY=PASSIVE")
    print(f"{describe(args)}; medians of {args.repeats} after {args.warmup} warm-up, interleaved")
    print(f"  ours       {ours:8.3f} s   {[round(t, 2) for t in times['ours']]}")
    print(f"  reference  {ref:8.3f} s   {[round(t, 2) for t in times['reference']]}")
    print(f"  reference / ours = {ref / ours:.2f}x", flush=True)
    if args.memory:
        mem = {k: measure_memory(script, args, k) for k in ("ours", "reference")}
        print(f"  peak resident memory: ours {mem['ours']:.2f} GB, reference {mem['reference']:.2f} GB")
        print(f"  machine after: {machine()}")

"""Latency of the exported network in each runtime next to the Keras model, on this CPU.

    python -m bench.bench_export --arch r50 --size 480x640 --runs 7
    python -m bench.bench_export --arch tiny --size 192x288 --runs 15

One (1, H, W, 3) input through the network (`pred_logits`, `pred_masks`): Keras (`model(x)`, eager,
as test.py runs it), the SavedModel's `logits` signature (tf.saved_model.load), LiteRT float32
and float16 weights (ai-edge-litert, 2 threads), ONNX Runtime (2 intra-op threads). TensorFlow runs
with 2 intra-op threads. Random seeded weights (latency does not depend on them). Rounds are
interleaved (every runtime once per round, in turn) after one warm-up call each; prints medians,
ratios to Keras eager, and the largest output difference from Keras.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

THREADS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("r50", "tiny"), default="r50")
    parser.add_argument("--size", default="480x640", help="network input HxW (multiples of 32 keep it exact)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--folder",
        default=None,
        help="where the exports go; exports already there (saved_model/, m_float32.tflite, m_float16.tflite, "
        "m.onnx from an earlier run with the same --arch and --size) are reused",
    )
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    import keras
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    from config import Mask2FormerConfig
    from inference import export
    from model import build_model
    from tests.helpers import tiny_config

    height, width = (int(v) for v in args.size.split("x"))
    config = tiny_config() if args.arch == "tiny" else Mask2FormerConfig()
    keras.utils.set_random_seed(0)
    network = build_model(config)
    x = np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)).astype(np.float32)
    folder = args.folder or tempfile.mkdtemp(prefix="bench_export_")
    os.makedirs(folder, exist_ok=True)

    runners = {"keras eager": lambda: network(x, training=False)}
    # one traced SavedModel of the logits function at this size; LiteRT and ONNX are converted from it
    started = time.perf_counter()
    if not os.path.isdir(f"{folder}/saved_model"):
        archive = keras.export.ExportArchive()
        archive.track(network)
        spec = [export._logits_spec((height, width))]
        archive.add_endpoint("serving_default", export.ServingFunctions.logits_of(network), spec)
        archive.write_out(f"{folder}/saved_model", verbose=False)
    loaded = tf.saved_model.load(f"{folder}/saved_model")  # kept: the signature needs its variables
    logits = loaded.signatures["serving_default"]
    runners["SavedModel logits"] = lambda: logits(images=tf.constant(x))
    print(f"SavedModel export {time.perf_counter() - started:.0f} s", flush=True)
    for precision in ("float32", "float16"):
        started = time.perf_counter()
        if not os.path.isfile(f"{folder}/m_{precision}.tflite"):
            export.litert_from_saved_model(f"{folder}/saved_model", f"{folder}/m_{precision}.tflite", precision)
        interpreter = Interpreter(model_path=f"{folder}/m_{precision}.tflite", num_threads=THREADS)
        runners[f"LiteRT {precision}"] = _bind(interpreter.get_signature_runner(), x)
        print(f"LiteRT {precision} conversion {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    if not os.path.isfile(f"{folder}/m.onnx"):
        export.onnx_from_function(
            tf.function(lambda images: logits(images=images)), f"{folder}/m.onnx", (height, width)
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(f"{folder}/m.onnx", options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = {session.get_inputs()[0].name: x}
    runners["ONNX Runtime"] = lambda: dict(zip(names, session.run(None, feed), strict=True))
    print(f"ONNX conversion {time.perf_counter() - started:.0f} s", flush=True)

    reference = {k: np.asarray(v) for k, v in runners["keras eager"]().items() if k in ("pred_logits", "pred_masks")}
    differences = {}
    for name, run in runners.items():  # warm-up, and the outputs' distance from Keras
        out = run()
        differences[name] = max(float(np.abs(np.asarray(out[k]) - reference[k]).max()) for k in reference)
    times = {name: [] for name in runners}
    for _ in range(args.runs):
        for name, run in runners.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)

    base = statistics.median(times["keras eager"])
    print(f"\n{args.arch} at {height}x{width}, {THREADS} threads each, median of {args.runs} interleaved rounds")
    print("| runtime | median latency | vs Keras eager | max abs diff from Keras |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1000:.0f} ms | {median / base:.2f}x | {differences[name]:.1e} |")


def _bind(runner, x):
    return lambda: runner(images=x)


if __name__ == "__main__":
    main()

"""A/B of the deformable sampling's weighted sum on Keras' JAX backend: product-and-sum against a batched matmul.

    python bench/gpu_weighted_sum.py                       # R50, 800x1216, batch 1 (an H100: about a minute)
    python bench/gpu_weighted_sum.py --tiny --size 128x192 # checks that it runs (CPU too)

`model.ms_deform_attn._weighted_sum` is the batched matmul on every backend; on an H100 the two forms took
17.7 and 17.5 ms (bench/NOTES.md, inference attempt 10).
This builds one random-weight model, compiles `CompiledModel(mode="xla")` (= `jax.jit`) once with each form,
checks that they agree, and times the two calls interleaved (A B A B), medians of `--repeats` after warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.modules["tensorflow"] = None  # any import of TensorFlow now fails: the script must not need it
os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="800x1216", help="image HxW")
    parser.add_argument("--tiny", action="store_true", help="the tiny test architecture instead of R50")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))

    import jax
    from keras import ops

    from inference.predictor import CompiledModel
    from model import build_model, ms_deform_attn
    from tools.hf_reference import keras_config

    image = np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)).astype(np.float32)
    network = build_model(keras_config("tiny" if args.tiny else "r50"))
    model_form = ms_deform_attn._weighted_sum  # the batched matmul

    def product_sum(weights, samples):  # the form fb7d156 used on JAX
        return ops.sum(ops.swapaxes(weights, 1, 2) * samples, axis=1, keepdims=True)

    forms = {"product and sum": product_sum, "batched matmul": model_form}
    runs, outputs, first = {}, {}, {}
    for label, form in forms.items():
        ms_deform_attn._weighted_sum = form  # read when the call is traced, i.e. at each one's first call
        runs[label] = CompiledModel(network, "xla")
        start = time.perf_counter()
        outputs[label] = runs[label](image)
        first[label] = time.perf_counter() - start
    ms_deform_attn._weighted_sum = model_form
    for run in runs.values():
        for _ in range(args.warmup):
            run(image)
    times = {label: [] for label in runs}
    for _ in range(args.repeats):
        for label, run in runs.items():
            start = time.perf_counter()
            run(image)
            times[label].append(time.perf_counter() - start)
    a, b = (outputs[label]["pred_masks"] for label in forms)
    print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}; {height}x{width}, batch 1")
    print(f"max |difference| of pred_masks between the forms: {np.abs(a - b).max():.2e}")
    baseline = statistics.median(times["product and sum"])
    for label, values in times.items():
        median = statistics.median(values)
        print(f"{label:16s} {median * 1e3:8.1f} ms  {median / baseline:5.2f}x  first call {first[label]:5.1f} s")


if __name__ == "__main__":
    main()

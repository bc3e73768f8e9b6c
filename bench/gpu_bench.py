"""GPU inference: ours on Keras' JAX backend (jitted) against the reference in PyTorch, same GPU, same weights.

    python -m bench.gpu_bench                          # R50, 800x1216, batch 1 (about 2 minutes on an H100)
    python -m bench.gpu_bench --size 128x192 --tiny    # a tiny model: checks that the script runs (CPU too)

Imports nothing that imports TensorFlow (a GPU machine with jax, torch and transformers is enough;
TensorFlow is blocked at start to prove it). The reference is `tests/hf_reference.py`'s random R50
(the parity tests' construction); its weights go through our detectron2 loader into our model.
Times the model call on one random image: host array in, `pred_logits` and `pred_masks` back on the
host, medians of `--repeats` after `--warmup` calls; ours is `CompiledModel(mode="xla")` = `jax.jit`,
compiled once for the shape (first call reported separately). The reference runs in float32 and,
with --fp16, under `torch.autocast(float16)`. Prints a table with images/s and the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.modules["tensorflow"] = None  # any import of TensorFlow now fails: the script must not need it
os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX and torch share the GPU

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="800x1216", help="image HxW")
    parser.add_argument("--tiny", action="store_true", help="the tiny test architecture instead of R50")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-fp16", dest="fp16", action="store_false", help="skip the reference under autocast")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))

    import jax
    import keras
    import torch

    from inference.predictor import CompiledModel
    from model import build_model
    from tests.hf_reference import build_reference, keras_config, load_reference_weights, normalize

    assert keras.backend.backend() == "jax"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = "tiny" if args.tiny else "r50"
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (1, height, width, 3)).astype(np.float32)
    hf = build_reference(name, seed=0, calibration_images=image[:, :256, :256])
    network = build_model(keras_config(name))
    load_reference_weights(network, hf, name)
    hf = hf.to(device)
    ours = CompiledModel(network, "xla")

    def reference(autocast: bool):
        def run(images):
            x = normalize(images).float().to(device)
            with torch.no_grad(), torch.autocast(device, dtype=torch.float16, enabled=autocast):
                out = hf(pixel_values=x)
            return {"pred_logits": out.class_queries_logits.float().cpu().numpy(),
                    "pred_masks": out.masks_queries_logits.float().cpu().numpy()}  # fmt: skip

        return run

    runs = {"ours (Keras JAX, jit)": ours, "reference (torch fp32)": reference(False)}
    if args.fp16 and device == "cuda":
        runs["reference (torch fp16 autocast)"] = reference(True)
    first, outputs = {}, {}
    for label, run in runs.items():
        start = time.perf_counter()
        outputs[label] = run(image)
        first[label] = time.perf_counter() - start
        for _ in range(args.warmup):
            run(image)
    times = {label: [] for label in runs}
    for _ in range(args.repeats):
        for label, run in runs.items():
            start = time.perf_counter()
            run(image)
            times[label].append(time.perf_counter() - start)

    ours_label, ref_label = list(runs)[:2]
    difference = np.abs(outputs[ours_label]["pred_masks"] - outputs[ref_label]["pred_masks"]).max()
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {gpu}; jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}")
    print(f"{name} {height}x{width}, batch 1, model call (host image in, outputs on host); "
          f"max |ours - reference fp32| pred_masks {difference:.2e}")  # fmt: skip
    ours_median = statistics.median(times[ours_label])
    print(f"{'':34s} {'median ms':>10s} {'images/s':>9s} {'vs ours':>8s} {'first call s':>13s}")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"{label:34s} {median * 1e3:10.1f} {1 / median:9.1f} {median / ours_median:8.2f} {first[label]:13.1f}")


if __name__ == "__main__":
    main()

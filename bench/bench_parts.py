"""Where our forward's time goes: backbone, pixel decoder and transformer decoder, each its own `tf.function`.

    python bench/bench_parts.py                      # R50, 512x512 and 800x1216
    python bench/bench_parts.py --sizes 128x128 --tiny

Random R50 weights, one random image per size, 2 threads, medians of `--repeats` after one warm-up call
(bench/NOTES.md, inference attempts 13 and 15). Ours only: the reference has no such split in the same
units.
"""

from __future__ import annotations

import argparse
import statistics
import time

from harness import machine, set_tensorflow_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512x512,800x1216", help="image sizes HxW, comma-separated")
    parser.add_argument("--tiny", action="store_true", help="the tiny test architecture instead of R50")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from model import build_model
    from tools.hf_reference import keras_config

    set_tensorflow_threads()
    network = build_model(keras_config("tiny" if args.tiny else "r50"))
    backbone = tf.function(lambda images: network.backbone(network.preprocess(images), training=False))
    pixel_decoder = tf.function(lambda features: network.pixel_decoder(features))
    transformer_decoder = tf.function(lambda levels, mask_features: network.transformer_decoder(levels, mask_features))
    print(machine())
    for size in args.sizes.split(","):
        height, width = (int(v) for v in size.lower().split("x"))
        images = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)), tf.float32)
        features = backbone(images)
        mask_features, levels = pixel_decoder(features)
        transformer_decoder(levels, mask_features)
        parts = {  # (function, its arguments)
            "backbone": (backbone, (images,)),
            "pixel decoder": (pixel_decoder, (features,)),
            "transformer decoder": (transformer_decoder, (levels, mask_features)),
        }
        print(f"\n{height}x{width}")
        for name, (part, inputs) in parts.items():
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                part(*inputs)
                times.append(time.perf_counter() - start)
            print(f"{name:20s} {statistics.median(times):7.3f} s")


if __name__ == "__main__":
    main()

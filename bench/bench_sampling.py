"""One deformable-attention layer's sampling (`deformable_sample`), all rows at once against blocks of rows.

    python bench/bench_sampling.py                        # R50 levels at 512x512 and 800x1216
    python bench/bench_sampling.py --blocks 256,512,1024  # other block sizes
    python bench/bench_sampling.py --sizes 512x512 --train-batch 2   # + training's forward + backward

Random value maps of the R50 pixel decoder's three levels (1/8, 1/16, 1/32), 8 heads of 32 channels,
4 points per level and head, points scattered around each query's own position, as a trained model's are.
`tf.function`, 2 threads, medians of `--repeats` after one warm-up call, the variants interleaved.
Prints seconds per call and the largest difference to the all-at-once result (bench/NOTES.md, inference
attempt 15). With `--train-batch B` it also times the sampling as a training step runs it, for a batch of B:
rematerialised (`keras.remat`), 4 corners in one gather, forward + backward to the value, locations and
weights (training attempts 18-21).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

from harness import machine, set_tensorflow_threads


def training_call(batch, value, shapes, locations, weights, rng):
    """A `tf.function`: the sampling's forward + backward as a training step runs it, for a batch of `batch`
    copies of the inputs (rematerialised, the 4 corners in one gather)."""
    import keras
    import tensorflow as tf

    from model.ms_deform_attn import deformable_sample

    inputs = [tf.Variable(tf.concat([t] * batch, axis=0)) for t in (value, locations, weights)]
    upstream = tf.constant(rng.standard_normal((batch, *value.shape[1:])), tf.float32)
    sample = keras.remat(functools.partial(deformable_sample, one_gather=True))

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(sample(inputs[0], shapes, *inputs[1:]) * upstream)
        return tape.gradient(loss, inputs)

    return forward_backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512x512,800x1216", help="image sizes HxW, comma-separated")
    parser.add_argument("--blocks", default="512", help="rows per block to compare with all at once")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=0, help="also time training's forward + backward")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from model.ms_deform_attn import deformable_sample

    set_tensorflow_threads()
    heads, head_dim, points = 8, 32, 4
    print(machine())
    for size in args.sizes.split(","):
        height, width = (int(v) for v in size.lower().split("x"))
        shapes = [(-(-height // stride), -(-width // stride)) for stride in (8, 16, 32)]
        tokens = sum(h * w for h, w in shapes)
        rng = np.random.default_rng(0)
        value = tf.constant(rng.standard_normal((1, tokens, heads, head_dim)), tf.float32)
        centres = np.concatenate(
            [
                np.stack(np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h), -1).reshape(-1, 2)
                for h, w in shapes
            ]
        )
        spread = rng.normal(0, 0.03, (1, tokens, heads, len(shapes), points, 2))
        locations = tf.constant(centres[None, :, None, None, None, :] + spread, tf.float32)
        weights = tf.constant(rng.dirichlet(np.ones(len(shapes) * points), (1, tokens, heads)), tf.float32)
        weights = tf.reshape(weights, (1, tokens, heads, len(shapes), points))
        training = {}
        if args.train_batch:
            training[f"training, batch {args.train_batch}"] = training_call(
                args.train_batch, value, shapes, locations, weights, rng
            )
        variants = {"all at once": None} | {f"blocks of {b}": int(b) for b in args.blocks.split(",")}
        functions = {
            label: tf.function(
                functools.partial(deformable_sample, value, shapes, locations, weights, rows_per_block=rows)
            )
            for label, rows in variants.items()
        }
        outputs = {label: function().numpy() for label, function in functions.items()}
        for function in training.values():
            function()
        times = {label: [] for label in functions | training}
        for _ in range(args.repeats):
            for label, function in (functions | training).items():
                start = time.perf_counter()
                function()
                times[label].append(time.perf_counter() - start)
        print(f"\n{height}x{width}: levels {shapes}, {tokens} queries x {heads} heads")
        for label in functions:
            difference = np.abs(outputs[label] - outputs["all at once"]).max()
            print(f"{label:16s} {statistics.median(times[label]):8.3f} s   max difference {difference:.1e}")
        for label in training:
            print(f"{label:16s} {statistics.median(times[label]):8.3f} s   (forward + backward)")


if __name__ == "__main__":
    main()

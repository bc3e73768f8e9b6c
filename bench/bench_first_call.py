"""First call of test.py's graph: ops, trace and optimisation time, Linear against Keras' Dense (A/B).

    python bench/bench_first_call.py                    # R50, 512x512, 2 traces of each, alternating
    python bench/bench_first_call.py --tiny --size 128  # checks that it runs

Both models have the same weights; in the "dense" one every `model.layers.Linear` calls `keras.layers.Dense.call`
(Keras' `tf.tensordot` for (B, N, C) inputs). Each trace is a new `tf.function` over any input shape, as
`CompiledModel(mode="function")` makes for test.py and the export: "trace" is `get_concrete_function`, "first
call" the first run (grappler's optimisation + the run), "run" the median of later calls. Compile = trace +
first call - run. TensorFlow only; 2 threads.
"""

from __future__ import annotations

import argparse
import statistics
import time
import types

from harness import machine, set_tensorflow_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square image side")
    parser.add_argument("--tiny", action="store_true", help="the tiny test architecture instead of R50")
    parser.add_argument("--traces", type=int, default=2, help="traces of each model, alternating")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after each first call")
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from model import build_model
    from model.layers import Linear
    from tools.hf_reference import keras_config

    set_tensorflow_threads()
    config = keras_config("tiny" if args.tiny else "r50")
    keras.utils.set_random_seed(0)
    networks = {"linear": build_model(config), "dense": build_model(config)}
    networks["dense"].set_weights(networks["linear"].get_weights())
    for layer in networks["dense"]._flatten_layers():
        if isinstance(layer, Linear):
            layer.call = types.MethodType(keras.layers.Dense.call, layer)
    image = np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 3)).astype(np.float32)
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    results = {name: [] for name in networks}
    masks = {}
    for _ in range(args.traces):
        for name, network in networks.items():

            def predict(images, network=network):
                return network(images, training=False)["pred_masks"]

            function = tf.function(predict, input_signature=[spec], autograph=False)
            start = time.perf_counter()
            graph = function.get_concrete_function().graph
            trace = time.perf_counter() - start
            start = time.perf_counter()
            masks[name] = function(image).numpy()
            first = time.perf_counter() - start
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                function(image)
                runs.append(time.perf_counter() - start)
            results[name].append((len(graph.get_operations()), trace, first, statistics.median(runs)))
    print(f"{machine()}; {'tiny' if args.tiny else 'R50'} {args.size}x{args.size}, {args.traces} traces each")
    print(f"max |linear - dense| pred_masks: {np.abs(masks['linear'] - masks['dense']).max():.2e}")
    print(f"{'':8s} {'ops':>7s} {'trace s':>8s} {'first s':>8s} {'run s':>7s} {'compile s':>10s}")
    for name, rows in results.items():
        ops, trace, first, run = (statistics.median(column) for column in zip(*rows, strict=True))
        print(f"{name:8s} {ops:7.0f} {trace:8.1f} {first:8.1f} {run:7.2f} {trace + first - run:10.1f}")


if __name__ == "__main__":
    main()

"""GPU training step: our network on Keras' PyTorch backend against the reference, same GPU, same weights.

    python -m bench.gpu_train_step                           # R50, 2 x 512x512, 5 and 10 instances
    python -m bench.gpu_train_step --tiny --size 128 --repeats 2 --warmup 1   # checks that it runs (CPU too)

One step = forward, matching, loss, backward, global-norm clipping at 0.01, AdamW update. Imports nothing
that imports TensorFlow (TensorFlow is blocked at start): our criterion and optimizer are TensorFlow code,
so both sides here use the reference's loss, transformers' `Mask2FormerLoss` (our criterion equals it
within 1e-5, tests/test_criterion.py), and the timing compares the networks' forward and backward plus
an AdamW update. Ours: the Keras model (`training=True`) on the torch backend, gradients by torch autograd,
`keras.optimizers.AdamW(global_clipnorm=0.01)`. Reference: `Mask2FormerForUniversalSegmentation` with
frozen batch norm as ours, `clip_grad_norm_(0.01)` and `torch.optim.AdamW`. Interleaved ours / reference,
medians of `--repeats` after `--warmup` steps, each ended by a device synchronisation. "step GiB" is the
peak GPU memory a step allocates above what is resident (both models' weights and optimizer states),
read from torch's allocator during each side's warm-up steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.modules["tensorflow"] = None  # any import of TensorFlow now fails: the script must not need it
os.environ["KERAS_BACKEND"] = "torch"

import numpy as np  # noqa: E402


def disc_targets(rng, counts, size, num_classes):
    """Per image: (N, size, size) float32 disc masks and (N,) int64 labels, N from `counts`."""
    yy, xx = np.mgrid[:size, :size]
    masks, labels = [], []
    for count in counts:
        discs = []
        for _ in range(count):
            cy, cx, r = *rng.uniform(0, size, 2), rng.uniform(size / 20, size / 4)
            discs.append((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
        masks.append(np.stack(discs).astype(np.float32))
        labels.append(rng.integers(0, num_classes, count))
    return masks, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square image side")
    parser.add_argument("--instances", default="5,10", help="instances per image, one number per image")
    parser.add_argument("--tiny", action="store_true", help="the tiny test architecture instead of R50")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="then print torch's op profile of 2 steps of each")
    args = parser.parse_args()

    import keras
    import torch

    from model import build_model
    from tests.hf_reference import SIZES, build_reference, keras_config, load_reference_weights, reference_train_step

    assert keras.backend.backend() == "torch"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = "tiny" if args.tiny else "r50"
    rng = np.random.default_rng(0)
    counts = [int(c) for c in args.instances.split(",")]
    images = rng.uniform(0, 255, (len(counts), args.size, args.size, 3)).astype(np.float32)
    masks, labels = disc_targets(rng, counts, args.size, SIZES[name]["num_labels"])

    hf = build_reference(name, seed=0)
    network = build_model(keras_config(name))
    load_reference_weights(network, hf, name)
    hf = hf.to(device)
    mask_labels = [torch.from_numpy(m).to(device) for m in masks]
    class_labels = [torch.from_numpy(c).to(device) for c in labels]
    reference_step = reference_train_step(hf, images, mask_labels, class_labels)  # also freezes its batch norm
    host_images = torch.from_numpy(images).to(device)

    def loss_of(final_masks, final_logits, aux):
        """The reference's weighted total: `Mask2FormerLoss` over the final and auxiliary predictions."""
        loss_dict = hf.get_loss_dict(final_masks, final_logits, mask_labels, class_labels, aux)
        return hf.get_loss(loss_dict)

    variables = network.trainable_variables
    optimizer = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.05, global_clipnorm=0.01)
    optimizer.build(variables)

    def our_step():
        network.zero_grad()
        out = network(host_images, training=True)
        aux = [
            {"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
            for a in out["aux_outputs"]
        ]
        loss = loss_of(out["pred_masks"], out["pred_logits"], aux)
        loss.backward()
        with torch.no_grad():
            optimizer.apply([v.value.grad for v in variables], variables)
        return float(loss.detach())

    runs = {"ours (Keras torch backend)": our_step, "reference (torch)": reference_step}
    first_loss, peak = {}, {}
    for label, run in runs.items():
        first_loss[label] = run()  # also creates the optimizer's state
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated()
        for _ in range(args.warmup):
            run()
        if device == "cuda":
            torch.cuda.synchronize()
            peak[label] = (torch.cuda.max_memory_allocated() - resident) / 2**30
    times = {label: [] for label in runs}
    for _ in range(args.repeats):
        for label, run in runs.items():
            start = time.perf_counter()
            run()
            if device == "cuda":
                torch.cuda.synchronize()
            times[label].append(time.perf_counter() - start)

    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {gpu}; keras {keras.__version__} (torch backend), torch {torch.__version__}")
    print(f"{name} {len(counts)} x {args.size}x{args.size}, instances {args.instances}; one training step")
    print("first-step loss: " + ", ".join(f"{label} {value:.5f}" for label, value in first_loss.items()))
    ours_label = next(iter(runs))
    ours_median = statistics.median(times[ours_label])
    print(f"{'':30s} {'median ms':>10s} {'steps/s':>8s} {'vs ours':>8s} {'step GiB':>9s}")
    for label, values in times.items():
        median = statistics.median(values)
        memory = f"{peak[label]:9.2f}" if label in peak else f"{'-':>9s}"
        print(f"{label:30s} {median * 1e3:10.1f} {1 / median:8.2f} {median / ours_median:8.2f} {memory}")
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        for label, run in runs.items():
            with torch.profiler.profile(activities=activities) as profile:
                run()
                run()
            key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
            print(f"\n{label}: 2 steps, top ops by {key}")
            print(profile.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=50))


if __name__ == "__main__":
    main()

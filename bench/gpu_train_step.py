"""GPU training step: our whole step under `jax.jit` against the reference's torch step, same GPU, same weights.

    python -m bench.gpu_train_step                       # R50, 2 x 512x512, 5 and 10 instances, fp32/bf16/fp16
    python -m bench.gpu_train_step --tiny --size 128 --repeats 2 --warmup 1 --precisions float32  # runs on a CPU

One step = forward, matching (scipy on the host), loss, backward, global-norm clipping at 0.01, AdamW update.
Ours: `training.keras_step.KerasTrainStep` on Keras' JAX backend (the criterion of losses/, the optimizer of
training/optimizer.py, one `jax.jit` with the state donated). Reference: transformers'
`Mask2FormerForUniversalSegmentation` with its `Mask2FormerLoss`, frozen batch norm as ours,
`clip_grad_norm_(0.01)` and `torch.optim.AdamW`; under `torch.autocast` (bfloat16, or float16 with a
`GradScaler`) for the mixed-precision rows, against ours under `mixed_bfloat16` / `mixed_float16` (loss scaling).
Interleaved ours / reference, medians of `--repeats` after `--warmup` steps, each ended by reading the loss
(a device synchronisation). "GiB": the device memory a step allocates beyond what is resident (weights,
optimizer states, the batch): XLA's memory analysis of the compiled step (temporaries and the outputs not
written into the donated state) for ours, the allocator's peak above the resident bytes for the reference. Imports nothing that imports TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.modules["tensorflow"] = None  # any import of TensorFlow now fails: the step must not need it
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX and torch share the GPU

import numpy as np  # noqa: E402

POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def disc_targets(rng, counts, size, num_classes, slots):
    """Padded targets: masks (B, slots, size, size) uint8, labels (B, slots) int32, valid (B, slots) bool."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((len(counts), slots, size, size), np.uint8)
    labels = np.zeros((len(counts), slots), np.int32)
    valid = np.zeros((len(counts), slots), bool)
    for b, count in enumerate(counts):
        for i in range(count):
            cy, cx, r = *rng.uniform(0, size, 2), rng.uniform(size / 20, size / 4)
            masks[b, i] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            labels[b, i] = rng.integers(0, num_classes)
            valid[b, i] = True
    return masks, labels, valid


def reference_step(hf, images, mask_labels, class_labels, precision):
    """The reference's step (see the module docstring) under autocast for bfloat16 / float16."""
    import torch

    from tests.hf_reference import normalize

    hf.train()
    for module in hf.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
            module.requires_grad_(False)
    trainable = [p for p in hf.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05)
    pixels = normalize(images).float().to(next(hf.parameters()).device)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "float16")

    def step() -> float:
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = hf(pixel_values=pixels, mask_labels=mask_labels, class_labels=class_labels).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 0.01)
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square image side")
    parser.add_argument("--instances", default="5,10", help="instances per image, one number per image")
    parser.add_argument("--tiny", action="store_true", help="the tiny test architecture instead of R50")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precisions", default="bfloat16,float16,float32", help=f"of {sorted(POLICIES)}")
    args = parser.parse_args()

    import jax
    import keras
    import torch

    from losses import build_criterion
    from model import build_model
    from tests.hf_reference import SIZES, build_reference, keras_config, load_reference_weights
    from training.keras_step import KerasTrainStep
    from training.optimizer import build_optimizer
    from training.schedules import build_schedule

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = "tiny" if args.tiny else "r50"
    rng = np.random.default_rng(0)
    counts = [int(c) for c in args.instances.split(",")]
    slots = 1 << (max(counts) - 1).bit_length()  # the pipeline's power-of-two bucket
    images = rng.uniform(0, 255, (len(counts), args.size, args.size, 3)).astype(np.float32)
    masks, labels, valid = disc_targets(rng, counts, args.size, SIZES[name]["num_labels"], slots)
    batch = {"image": images, "masks": masks, "labels": labels, "valid": valid}
    mask_labels = [torch.from_numpy(masks[b, :c].astype(np.float32)).to(device) for b, c in enumerate(counts)]
    class_labels = [torch.from_numpy(labels[b, :c].astype(np.int64)).to(device) for b, c in enumerate(counts)]
    jax_device = jax.devices()[0]

    print(
        f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}; jax {jax.__version__} "
        f"({jax_device.platform}), keras {keras.__version__}, torch {torch.__version__}"
    )
    print(f"{name} {len(counts)} x {args.size}x{args.size}, instances {args.instances} ({slots} slots); one step")
    print(
        f"{'precision':10s} {'ours ms':>9s} {'ref ms':>9s} {'speed-up':>9s} {'ours GiB':>9s} {'ref GiB':>9s}"
        f" {'compile s':>10s} {'ours loss':>10s} {'ref loss':>10s}"
    )

    def run_precision(precision):
        config = keras_config(name)
        config.train.mixed_precision = POLICIES[precision]
        hf = build_reference(name, seed=0)
        network = build_model(config, dtype=keras.DTypePolicy(config.train.mixed_precision))
        load_reference_weights(network, hf, name)
        hf = hf.to(device)
        schedule = build_schedule(config.train)
        optimizer = build_optimizer(config.train, network, learning_rate=config.train.learning_rate)
        ours = KerasTrainStep(network, build_criterion(config, dynamic_pairs=False), optimizer, schedule, seed=0)
        theirs = reference_step(hf, images, mask_labels, class_labels, precision)
        steps = {"ours": lambda step_fn=ours: step_fn(batch, 0)["loss_total"], "ref": theirs}

        start = time.perf_counter()
        memory = ours.compile(batch)  # the step's own memory, apart from XLA's compile-time autotuning
        first = {"ours": steps["ours"]()}
        compile_s = time.perf_counter() - start
        first["ref"] = steps["ref"]()
        peak = {"ours": (memory["temp"] + memory["outputs"] - memory["aliased"]) / 2**30}
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            torch_resident = torch.cuda.memory_allocated()
        for _ in range(args.warmup):
            steps["ours"]()
            steps["ref"]()
        if device == "cuda":
            peak["ref"] = (torch.cuda.max_memory_allocated() - torch_resident) / 2**30
        times = {label: [] for label in steps}
        for _ in range(args.repeats):
            for label, run in steps.items():
                start = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - start)
        ours_ms, ref_ms = (statistics.median(times[label]) * 1e3 for label in ("ours", "ref"))
        print(
            f"{precision:10s} {ours_ms:9.1f} {ref_ms:9.1f} {ref_ms / ours_ms:8.2f}x {peak['ours']:9.2f} "
            f"{peak.get('ref', float('nan')):9.2f} {compile_s:10.1f} {first['ours']:10.4f} {first['ref']:10.4f}",
            flush=True,
        )
        if device == "cuda":
            torch.cuda.empty_cache()

    for precision in args.precisions.split(","):
        try:
            run_precision(precision)
        except Exception as error:  # one precision failing leaves the others' rows
            print(f"{precision:10s} failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}", flush=True)


if __name__ == "__main__":
    main()

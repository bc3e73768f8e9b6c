"""One training step (forward, matching, loss, backward, AdamW update) against the reference.

    python bench/bench_train_step.py                # 2 x 512x512, 5 and 10 instances, R50, 80 classes, 100 queries
    python bench/bench_train_step.py --memory       # also the peak resident memory of each, fresh processes

Ours: `TrainStep` (the step train.py runs: one tf.function, float32, global-norm clipping at 0.01, AdamW)
on a batch as the pipeline gives it (targets padded to the batch's bucket, uint8). Reference: transformers'
`Mask2FormerForUniversalSegmentation` with its `Mask2FormerLoss` (labels passed to the forward), frozen
batch norm as ours, `clip_grad_norm_(0.01)` and `torch.optim.AdamW`. Random R50 weights on both sides
(timing does not depend on their values). Interleaved ours / reference, medians after warm-up, 2 threads
each, torch with OMP_WAIT_POLICY=PASSIVE (set before torch is imported).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # before torch starts its threads

import numpy as np  # noqa: E402
from bench_criterion import THREADS, interleaved, machine, make_targets, set_threads  # noqa: E402


def make_batch(args):
    rng = np.random.default_rng(args.seed)
    counts = [int(c) for c in args.instances.split(",")]
    targets = make_targets(rng, counts, args.size, args.max_instances)
    images = rng.uniform(0, 255, (len(counts), args.size, args.size, 3)).astype(np.float32)
    return images, targets


def ours_fn(images, targets):
    import tensorflow as tf

    from config import Mask2FormerConfig
    from losses import build_criterion
    from model import build_model
    from training.optimizer import build_optimizer
    from training.schedules import build_schedule
    from training.train_step import TrainStep

    config = Mask2FormerConfig()
    config.train.mixed_precision = "float32"
    model = build_model(config)
    step = tf.Variable(0, dtype=tf.int64)
    schedule = build_schedule(config.train)
    train_step = TrainStep(
        model,
        build_criterion(config),
        build_optimizer(config.train, model, learning_rate=lambda: schedule(step)),
        tf.distribute.get_strategy(),
        step,
        accumulation_steps=1,
        replica_batch_size=len(images),
        seed=0,
        learning_rate=schedule,
    )
    batch = {"image": tf.constant(images), **{k: tf.constant(v) for k, v in targets.items()}}
    return lambda: float(train_step(batch)["loss_total"])


def reference_fn(images, targets):
    import torch

    from tools.hf_reference import build_reference, normalize

    hf = build_reference("r50", seed=0)
    hf.train()
    for module in hf.modules():  # frozen batch norm, as ours (detectron2's FrozenBatchNorm2d)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
            module.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)
    pixels = normalize(images).float()
    valid = targets["valid"]
    mask_labels = [torch.from_numpy(m[v].astype(np.float32)) for m, v in zip(targets["masks"], valid, strict=True)]
    class_labels = [torch.from_numpy(lab[v].astype(np.int64)) for lab, v in zip(targets["labels"], valid, strict=True)]

    def run():
        optimizer.zero_grad()
        loss = hf(pixel_values=pixels, mask_labels=mask_labels, class_labels=class_labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 0.01)
        optimizer.step()
        return float(loss.detach())

    return run


def build(args, which):
    images, targets = make_batch(args)
    return (ours_fn if which == "ours" else reference_fn)(images, targets)


def child(args):
    set_threads()
    run = build(args, args.child)
    for _ in range(args.warmup + 1):
        run()
    print(json.dumps({"max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def measure_memory(args, which):
    argv = [sys.executable, __file__, "--child", which] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("child", "memory")
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["max_rss_gb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--instances", default="5,10", help="instances per image, comma separated")
    parser.add_argument("--max-instances", type=int, default=128, help="data.max_instances (caps the bucket)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory", action="store_true", help="also peak memory of each in a fresh process")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    set_threads()
    runs = {"ours": build(args, "ours"), "reference": build(args, "reference")}
    times = interleaved(runs, args.warmup, args.repeats)
    ours, ref = (statistics.median(times[k]) for k in ("ours", "reference"))
    print(f"machine: {machine()}; {THREADS} threads each, torch OMP_WAIT_POLICY=PASSIVE")
    print(
        f"training step (forward, matching, loss, backward, AdamW): {len(args.instances.split(','))} x "
        f"{args.size}x{args.size}, instances {args.instances}, R50, 80 classes, 100 queries; medians of "
        f"{args.repeats} after {args.warmup} warm-up, interleaved"
    )
    print(f"  ours       {ours:8.2f} s   {[round(t, 2) for t in times['ours']]}")
    print(f"  reference  {ref:8.2f} s   {[round(t, 2) for t in times['reference']]}")
    print(f"  reference / ours = {ref / ours:.2f}x")
    if args.memory:
        mem = {k: measure_memory(args, k) for k in ("ours", "reference")}
        print(f"  peak resident memory: ours {mem['ours']:.2f} GB, reference {mem['reference']:.2f} GB")


if __name__ == "__main__":
    main()

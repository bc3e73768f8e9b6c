"""Where a training step's time goes, ours and the reference's, part by part.

    python -m bench.profile_train_step                  # 2 x 512x512, 5 and 10 instances, R50 (about 15 min)
    python -m bench.profile_train_step --size 256       # smaller, quicker

Each side runs the same workload as `bench_train_step.py` in four nested pieces, timed interleaved
(ours and the reference's pieces in turn, A B A B), medians after warm-up:
forward; forward + loss; forward + loss + backward; the whole step (+ clipping and AdamW). The part of
each stage is the difference of two consecutive medians, so read it to about +-10% of the whole step.
Ours: one `tf.function` per piece, built from `TrainStep`'s own pieces (`_points`, the criterion,
`tape.gradient`). Reference: transformers' model in training mode (frozen batch norm), its
`Mask2FormerLoss` through the labels, `loss.backward()`, then `reference_train_step`.

It also counts the step's FLOPs on the reference (`torch.utils.flop_counter.FlopCounterMode` over forward,
loss and backward: convolutions and matmuls, 2 per multiply-add) and measures this machine's float32
matmul rate in the same run (`bench_inference.matmul_rates`, before and after the rounds, the higher),
so it prints what fraction of that rate each side's step implies, and the fraction a step 1.5x faster
than the reference's would need.
"""

from __future__ import annotations

import argparse
import statistics

from bench.bench_train_step import add_workload_arguments, make_batch, ours_batch, ours_train_step  # noqa: E402
from bench.harness import THREADS, interleaved, machine, set_threads  # noqa: E402  (OMP_WAIT_POLICY first)

STAGES = ("forward", "forward + loss", "forward + loss + backward", "step")


def ours_stages(images, targets) -> dict:
    """The four pieces of ours, each a callable that runs its piece once."""
    import tensorflow as tf

    step = ours_train_step(images)
    model, criterion = step.model, step.criterion
    batch = ours_batch(images, targets)

    def loss(outputs):
        normalizers = criterion.local_normalizers(batch["valid"], model.num_queries)
        points = step._points(step.step.read_value(), tf.constant(0, tf.int64))
        return criterion(outputs, batch, points=points, **normalizers)["loss_total"]

    @tf.function
    def forward():
        return tf.add_n([tf.reduce_sum(t) for t in tf.nest.flatten(model(batch["image"], training=True))])

    @tf.function
    def forward_loss():
        return loss(model(batch["image"], training=True))

    @tf.function
    def forward_loss_backward():
        with tf.GradientTape() as tape:
            total = loss(model(batch["image"], training=True))
        return tf.add_n([tf.reduce_sum(g) for g in tape.gradient(total, model.trainable_variables) if g is not None])

    pieces = (forward, forward_loss, forward_loss_backward, lambda: step(batch)["loss_total"])
    return {stage: (lambda piece=piece: float(piece())) for stage, piece in zip(STAGES, pieces, strict=True)}


def reference_step_flops(hf, pixels, mask_labels, class_labels) -> float:
    """FLOPs of the reference's forward + loss + backward (the optimizer's elementwise work not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        hf(pixel_values=pixels, mask_labels=mask_labels, class_labels=class_labels).loss.backward()
    hf.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def reference_stages(images, targets) -> dict:
    from bench.bench_criterion import reference_targets
    from tests.hf_reference import build_reference, normalize, reference_train_step

    hf = build_reference("r50", seed=0)
    mask_labels, class_labels = reference_targets(targets)
    whole_step = reference_train_step(hf, images, mask_labels, class_labels)  # puts hf in training mode
    pixels = normalize(images).float()

    def forward():
        float(hf(pixel_values=pixels).masks_queries_logits.sum())

    def forward_loss(backward=False):
        hf.zero_grad(set_to_none=True)
        loss = hf(pixel_values=pixels, mask_labels=mask_labels, class_labels=class_labels).loss
        if backward:
            loss.backward()
        float(loss.detach())

    stages = (forward, forward_loss, lambda: forward_loss(backward=True), whole_step)
    return dict(zip(STAGES, stages, strict=True)), reference_step_flops(hf, pixels, mask_labels, class_labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    set_threads()
    from bench.bench_inference import matmul_rates

    images, targets = make_batch(args)
    reference, flops = reference_stages(images, targets)
    sides = {"ours": ours_stages(images, targets), "reference": reference}
    before = matmul_rates()["tensorflow"]
    runs = {f"{side} {stage}": fn for side, stages in sides.items() for stage, fn in stages.items()}
    times = interleaved(runs, args.warmup, args.repeats)
    print(f"machine: {machine()}; {THREADS} threads each, torch OMP_WAIT_POLICY=PASSIVE")
    print(
        f"training step by part: {len(images)} x {args.size}x{args.size}, instances {args.instances}, R50; "
        f"medians of {args.repeats} after {args.warmup} warm-up, interleaved"
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'part':28s} {'ours s':>8s} {'reference s':>12s} {'reference / ours':>17s}")
    previous = {"ours": 0.0, "reference": 0.0}
    for stage, part in zip(STAGES, ("forward", "loss", "backward", "clip + AdamW"), strict=True):
        parts = {}
        for side in previous:
            parts[side] = medians[f"{side} {stage}"] - previous[side]
            previous[side] = medians[f"{side} {stage}"]
        print(f"{part:28s} {parts['ours']:8.2f} {parts['reference']:12.2f} {parts['reference'] / parts['ours']:16.2f}x")
    ours, ref = previous["ours"], previous["reference"]
    print(f"{'whole step':28s} {ours:8.2f} {ref:12.2f} {ref / ours:16.2f}x")
    rate = max(before, matmul_rates()["tensorflow"]) * 1e9  # it moves by +-15%: the higher of two
    print(
        f"step: {flops / 1e9:.0f} GFLOP (FlopCounterMode on the reference); TensorFlow float32 matmul "
        f"{rate / 1e9:.0f} GFLOP/s: ours at {flops / ours / rate:.0%} of it, the reference at "
        f"{flops / ref / rate:.0%}; the step at the full rate: {flops / rate:.2f} s; 1.5x the reference "
        f"({ref / 1.5:.2f} s) needs {1.5 * flops / ref / rate:.0%} of the rate"
    )


if __name__ == "__main__":
    main()

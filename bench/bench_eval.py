"""Evaluation cost per image at COCO-like sizes: is our own code what dominates?

    python -m bench.bench_eval [--images 20] [--repeats 3]

Synthetic data: 480 x 640 images with 20 panoptic segments (GT) and a perturbed prediction; for mask
AP, 7 ground-truth instances and 100 predicted instances per image (COCO's top-100). Prints medians
over `--repeats` runs, in milliseconds per image:

- PQ: our per-image counting (in memory) against a literal transcription of panopticapi's loop on
  the same arrays (ratio), PNG decoding, and our file-based `pq_compute` end to end;
- mask AP: our part (RLE encoding + result dicts; the encoding itself is pycocotools' C encoder)
  against pycocotools' loadRes + evaluate + accumulate (the reference tool, not ours);
- post-processing (keras.ops on the default device) of 100 queries x 80 classes to 480 x 640.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import tempfile
import time

import cv2
import numpy as np

from evaluation.coco import encode_masks, evaluate_coco_results, instances_to_coco_results  # noqa: E402
from evaluation.panoptic_quality import PanopticEvaluator, id_to_rgb, pq_compute, read_panoptic_png  # noqa: E402
from inference.postprocess import InstanceResult, masks_to_boxes  # noqa: E402
from tools.panopticapi_reference import panopticapi_image  # noqa: E402

HEIGHT, WIDTH = 480, 640
CATEGORIES = [{"id": i + 1, "name": str(i + 1), "isthing": int(i < 80)} for i in range(133)]


def voronoi_segments(rng, count: int) -> np.ndarray:
    """(H, W) int segment index 0..count-1: nearest of `count` random seeds (blocky, COCO-like sizes)."""
    seeds = rng.uniform([0, 0], [HEIGHT, WIDTH], (count, 2))
    ys, xs = np.mgrid[0:HEIGHT:4, 0:WIDTH:4]
    distance = (ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2
    return np.kron(distance.argmin(-1), np.ones((4, 4), np.int64))


def synthetic_panoptic(rng, num_segments: int = 20):
    """GT / prediction id maps and segments_info: the prediction is the GT shifted with two segments relabelled."""
    regions = voronoi_segments(rng, num_segments)
    ids = (regions + 1) * 1000  # distinct ids, 0 stays void
    ids[rng.random((HEIGHT, WIDTH)) < 0.02] = 0
    categories = rng.integers(1, 134, num_segments)
    gt_segments = [
        {"id": int((k + 1) * 1000), "category_id": int(categories[k]), "iscrowd": int(k == 0), "area": int(a)}
        for k, a in enumerate(np.bincount(regions[ids > 0], minlength=num_segments))
    ]
    pred_ids = np.roll(ids, (3, 5), axis=(0, 1))
    pred_categories = categories.copy()
    pred_categories[:2] = rng.integers(1, 134, 2)
    present = set(np.unique(pred_ids).tolist())
    pred_segments = [
        {"id": int((k + 1) * 1000), "category_id": int(pred_categories[k])}
        for k in range(num_segments)
        if (k + 1) * 1000 in present
    ]
    return ids, gt_segments, pred_ids, pred_segments


def median_ms_per_image(function, repeats: int, count: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / count


def bench_pq(rng, count: int, repeats: int, folder: str) -> None:
    images = [synthetic_panoptic(rng) for _ in range(count)]
    evaluator = PanopticEvaluator(CATEGORIES)
    ours = median_ms_per_image(lambda: [evaluator.image_counts(*image) for image in images], repeats, count)
    reference = median_ms_per_image(lambda: [panopticapi_image(*image) for image in images], repeats, count)

    gt_json, pred_json = {"annotations": [], "categories": CATEGORIES}, {"annotations": []}
    for folder_name in ("gt", "pred"):
        os.makedirs(os.path.join(folder, folder_name), exist_ok=True)
    for i, (gt_ids, gt_segments, pred_ids, pred_segments) in enumerate(images):
        name = f"{i:06d}.png"
        cv2.imwrite(os.path.join(folder, "gt", name), id_to_rgb(gt_ids)[..., ::-1])
        cv2.imwrite(os.path.join(folder, "pred", name), id_to_rgb(pred_ids)[..., ::-1])
        gt_json["annotations"].append({"image_id": i, "file_name": name, "segments_info": gt_segments})
        pred_json["annotations"].append({"image_id": i, "file_name": name, "segments_info": pred_segments})
    for name, content in (("gt.json", gt_json), ("pred.json", pred_json)):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(content, f)
    pngs = [os.path.join(folder, kind, f"{i:06d}.png") for i in range(count) for kind in ("gt", "pred")]
    decode = median_ms_per_image(lambda: [read_panoptic_png(png) for png in pngs], repeats, count)
    files = [os.path.join(folder, n) for n in ("gt.json", "pred.json", "gt", "pred")]
    end_to_end_1 = median_ms_per_image(lambda: pq_compute(*files, workers=1), repeats, count)
    end_to_end = median_ms_per_image(lambda: pq_compute(*files), repeats, count)

    print(f"PQ, {count} images of {HEIGHT}x{WIDTH}, 20 segments each (ms per image, median of {repeats})")
    print(f"  ours, per-image counting          {ours:8.2f}")
    print(f"  panopticapi loop, same arrays     {reference:8.2f}   (ours is {reference / ours:.1f}x faster)")
    print(f"  PNG decoding, GT + prediction     {decode:8.2f}")
    print(f"  pq_compute from files, 1 thread   {end_to_end_1:8.2f}")
    print(f"  pq_compute from files, threads    {end_to_end:8.2f}   ({min(8, os.cpu_count() or 1)} threads)")


def bench_mask_ap(rng, count: int, repeats: int, folder: str) -> None:
    images, annotations, predictions = [], [], []
    for image_id in range(count):
        regions = voronoi_segments(rng, 7)
        gt_masks = regions[None] == np.arange(7)[:, None, None]
        images.append({"id": image_id, "height": HEIGHT, "width": WIDTH})
        for mask, rle in zip(gt_masks, encode_masks(gt_masks), strict=True):
            x0, y0, x1, y1 = masks_to_boxes(mask[None])[0]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(rng.integers(1, 81)),
                 "segmentation": rle, "area": int(mask.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0}
            )  # fmt: skip
        shifted = np.roll(regions, (4, 6), axis=(0, 1))
        masks = np.concatenate([shifted.T[None] == np.arange(7)[:, None, None]] * 15)[:100]
        masks = np.ascontiguousarray(masks).transpose(0, 2, 1)  # the column-major layout instance_inference returns
        predictions.append(
            InstanceResult(
                masks=masks,
                scores=rng.random(100).astype(np.float32),
                labels=rng.integers(0, 80, 100),
                queries=np.arange(100),
                boxes=masks_to_boxes(masks),
            )
        )
    gt_file = os.path.join(folder, "instances.json")
    with open(gt_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES[:80]}, f, default=float)
    category_ids = [c["id"] for c in CATEGORIES[:80]]

    def encode():
        return [r for i, p in enumerate(predictions) for r in instances_to_coco_results(i, p, category_ids)]

    results = encode()
    ours = median_ms_per_image(encode, repeats, count)
    encoder = median_ms_per_image(lambda: [encode_masks(p.masks) for p in predictions], repeats, count)
    with contextlib.redirect_stdout(io.StringIO()):
        pycocotools = median_ms_per_image(lambda: evaluate_coco_results(gt_file, results, ("segm",)), repeats, count)
    print(f"mask AP, {count} images, 100 predictions each (ms per image, median of {repeats})")
    print(f"  ours, RLE encoding + result dicts {ours:8.2f}")
    print(f"    of which pycocotools encode     {encoder:8.2f}   (detectron2's evaluator makes the same call)")
    print(
        f"  pycocotools load + evaluate       {pycocotools:8.2f}   (ours is {100 * ours / (ours + pycocotools):.0f}% of the total)"
    )


def bench_postprocess(rng, repeats: int) -> None:
    from inference.postprocess import PostProcessor

    logits = rng.normal(0, 3, (1, 100, 81)).astype(np.float32)
    masks = rng.normal(0, 3, (1, 100, 200, 336)).astype(np.float32)  # 800 x 1344 padded input
    print(f"post-processing, 100 queries x 80 classes, padded 800x1344 -> 480x640 (ms per image, median of {repeats})")
    for task in ("instance", "panoptic", "semantic"):
        post = PostProcessor(task)
        post({"pred_logits": logits, "pred_masks": masks}, [(800, 1067)], [(HEIGHT, WIDTH)])  # warm up
        ms = median_ms_per_image(
            lambda post=post: post({"pred_logits": logits, "pred_masks": masks}, [(800, 1067)], [(HEIGHT, WIDTH)]),
            repeats,
            1,
        )
        print(f"  {task:10s}                        {ms:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-postprocess", action="store_true", help="leave out the keras.ops timing")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        bench_pq(rng, args.images, args.repeats, folder)
        bench_mask_ap(rng, args.images, args.repeats, folder)
    if not args.skip_postprocess:
        import tensorflow as tf

        print(f"device: {[d.name for d in tf.config.list_logical_devices()]}")
        bench_postprocess(rng, args.repeats)


if __name__ == "__main__":
    main()

"""Input-pipeline throughput: images/s of `build_dataset(config, "train")` with 1024x1024 large-scale jitter.

    python -m bench.bench_pipeline                       # default: 64 images, 3 runs of 96 samples
    python -m bench.bench_pipeline --runs 5 --samples 160 --batch_size 16

Writes synthetic COCO-like data first (640x480 JPEGs of smooth noise, about 7 polygon instances each,
some crowd), converts it with the project's converter, then times, in the same process:
  - decode only: records -> decoded image and masks (the floor any pipeline pays);
  - pipeline:    the full training pipeline (filter, shuffle, decode, flip + LSJ + crop/pad, targets
                 padded to data.max_instances), the static contract the model trains on.
Prints the machine (CPU count, load average: other processes share the CPU) and the median of the runs.
Target: >= 10 images/s on a 2-core machine (the official run consumes about 3 images/s per GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from config import Mask2FormerConfig  # noqa: E402
from data.categories import Categories  # noqa: E402
from data.coco_conversion import ConversionOptions, convert  # noqa: E402
from data.decoder import Decoder  # noqa: E402
from data.pipeline import build_dataset  # noqa: E402


def write_synthetic_coco(folder: str, num_images: int, seed: int = 0) -> str:
    """COCO-like images and polygon annotations; returns the annotation file."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = 480, 640
        small = rng.integers(0, 255, (height // 16, width // 16, 3), np.uint8)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        name = f"{image_id:06d}.jpg"
        cv2.imwrite(os.path.join(folder, "images", name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for _ in range(rng.poisson(7)):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            radius = rng.uniform(10, 150)
            angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
            xs = np.clip(cx + radius * np.cos(angles) * rng.uniform(0.5, 1.0, 12), 0, width - 1)
            ys = np.clip(cy + radius * np.sin(angles) * rng.uniform(0.5, 1.0, 12), 0, height - 1)
            x0, y0 = xs.min(), ys.min()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 81)),
                    "segmentation": [np.stack([xs, ys], 1).ravel().round(2).tolist()],
                    "bbox": [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1],
                    "area": float(radius * radius),
                    "iscrowd": int(rng.uniform() < 0.02),
                }
            )
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, 81)]
    path = os.path.join(folder, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def images_per_second(dataset: tf.data.Dataset, samples: int, per_element: int) -> float:
    iterator = iter(dataset)
    for _ in range(2):  # warm-up: graph tracing and the first buffers
        next(iterator)
    start = time.perf_counter()
    for _ in range(samples // per_element):
        next(iterator)
    return (samples // per_element) * per_element / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="synthetic images written (the pipeline repeats)")
    parser.add_argument("--samples", type=int, default=96, help="samples timed per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=0, help="0: time unbatched examples")
    args = parser.parse_args()

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f} (shared with other processes), TF {tf.__version__}"
    )
    with tempfile.TemporaryDirectory() as folder:
        annotation_file = write_synthetic_coco(folder, args.images)
        start = time.perf_counter()
        stats = convert(
            ConversionOptions(
                image_dir=os.path.join(folder, "images"),
                object_annotations_file=annotation_file,
                output_file_prefix=os.path.join(folder, "records", "train"),
                num_shards=4,
                progress=False,
            ),
            log=lambda line: None,
        )
        seconds = time.perf_counter() - start
        instances = json.load(open(annotation_file))["annotations"]
        print(
            f"data: {stats.images_written} images 640x480, {len(instances) / args.images:.1f} instances per image; "
            f"conversion {stats.images_written / seconds:.1f} images/s"
        )

        config = Mask2FormerConfig()  # official COCO recipe: 1024x1024 LSJ, max_instances 128
        config.data.train_files = os.path.join(folder, "records", "train-*.tfrecord")
        config.data.shuffle_buffer = 64
        config.data.seed = 0
        decoder = Decoder(Categories.load(os.path.join(folder, "records", "categories.json")))
        files = tf.io.gfile.glob(config.data.train_files)
        decode_only = (
            tf.data.TFRecordDataset(files)
            .repeat()
            .map(decoder, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
        )
        per_element = args.batch_size or 1
        pipeline = build_dataset(config, "train", batch_size=args.batch_size or None)
        results = {"decode only": [], "pipeline": []}
        for _ in range(args.runs):
            results["decode only"].append(images_per_second(decode_only, args.samples, 1))
            results["pipeline"].append(images_per_second(pipeline, args.samples, per_element))
        element = f"batches of {args.batch_size}" if args.batch_size else "unbatched examples"
        shape = pipeline.element_spec["masks"].shape
        print(f"pipeline output: {element}, masks {shape} uint8 (data.max_instances={config.data.max_instances})")
        for name, values in results.items():
            runs = ", ".join(f"{v:.1f}" for v in values)
            print(f"{name:12s} median {statistics.median(values):7.1f} images/s  (runs: {runs})")
        ratio = statistics.median(results["pipeline"]) / statistics.median(results["decode only"])
        print(f"pipeline / decode only: {ratio:.2f}")
        verdict = "meets" if statistics.median(results["pipeline"]) >= 10 else "MISSES"
        print(f"{verdict} the target of 10 images/s")


if __name__ == "__main__":
    main()

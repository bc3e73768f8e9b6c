"""Run Mask2Former on a folder of images: overlays and one JSON per image in images/res.

    python test.py --model mask2former_r50_coco.keras --images images/test                # converted model
    python test.py --weights model_final_94dc52.pkl --preset coco_panoptic --images photos  # detectron2 .pkl
    python test.py --weights runs/m/ckpt.weights.h5 --preset coco_panoptic --images photos \\
        --categories datasets/coco/tfrecords/categories.json --score-threshold 0.6 --batch-size 4

`--model` takes a `.keras` file (its architecture comes with it); `--weights` takes a detectron2 `.pkl`
or a Keras `.weights.h5` for the model that `--preset/--config/--set` describe.

For each image `x.jpg` it writes `images/res/x.png` (instance: coloured masks, outlines, "class 93%";
panoptic: one colour per segment, stuff labelled; semantic: class colours with a legend) and
`images/res/x.json` (COCO RLE masks, category ids and names, scores, boxes; see inference/results_json.py).
Task, score threshold and batch size come from the config (`inference.*`) or the flags below; any
size or aspect ratio works, EXIF orientation is applied, grayscale and RGBA images are converted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import cv2

from config import ConfigError, add_config_arguments, config_from_args
from data.categories import Categories
from inference.loading import load_model
from inference.postprocess import InstanceResult, PanopticResult
from inference.predictor import Predictor, read_image
from inference.results_json import result_to_json
from inference.visualize import draw_instances, draw_panoptic, draw_semantic

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Mask2Former inference on a folder of images.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a saved .keras model (e.g. a converted official checkpoint)")
    source.add_argument("--weights", help="weights for the configured model: detectron2 .pkl or Keras .weights.h5")
    parser.add_argument("--images", required=True, help="image folder (or one image file)")
    parser.add_argument("--output", default="images/res", help="where overlays and JSON go")
    parser.add_argument("--categories", default=None, help="categories.json (default: data.categories_file)")
    parser.add_argument("--task", choices=("instance", "panoptic", "semantic"), help="overrides inference.task")
    parser.add_argument("--score-threshold", type=float, help="overrides inference.score_threshold")
    parser.add_argument("--batch-size", type=int, help="overrides inference.batch_size")
    parser.add_argument("--device", default=None, help="TensorFlow device, e.g. /GPU:0 or /CPU:0")
    add_config_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        config = config_from_args(args)
        for key, value in (
            ("task", args.task),
            ("score_threshold", args.score_threshold),
            ("batch_size", args.batch_size),
        ):
            if value is not None:
                config.set(f"inference.{key}", value)
        config.validate()
        image_paths = list_images(args.images)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")

    import tensorflow as tf

    with tf.device(args.device) if args.device else contextlib.nullcontext():
        try:
            model = load_model(config, args.model, args.weights)
            categories = load_categories(args.categories or config.data.categories_file, config.model.num_classes)
        except (ConfigError, FileNotFoundError, ValueError) as e:
            sys.exit(f"error: {e}")
        predictor = Predictor(model, config, isthing=categories.isthing)
        try:
            run(
                predictor,
                image_paths,
                args.output,
                categories,
                config.inference.score_threshold,
                config.inference.batch_size,
            )
        except ValueError as e:
            sys.exit(f"error: {e}")


def run(predictor: Predictor, image_paths, output_dir, categories: Categories, score_threshold: float, batch_size: int):
    """Predicts `image_paths` in batches and writes `<stem>.png` overlays and `<stem>.json` results."""
    os.makedirs(output_dir, exist_ok=True)
    names = categories.names
    for start in range(0, len(image_paths), batch_size):
        paths = image_paths[start : start + batch_size]
        images = [read_image(path) for path in paths]
        for path, image, result in zip(paths, images, predictor(images), strict=True):
            if isinstance(result, InstanceResult):
                overlay = draw_instances(image, result, names, score_threshold)
            elif isinstance(result, PanopticResult):
                overlay = draw_panoptic(image, result, names)
            else:
                overlay = draw_semantic(image, result, names)
            stem = Path(path).stem
            cv2.imwrite(os.path.join(output_dir, f"{stem}.png"), overlay[..., ::-1])
            record = result_to_json(result, Path(path).name, categories.ids, names, score_threshold)
            with open(os.path.join(output_dir, f"{stem}.json"), "w") as f:
                json.dump(record, f)
            print(f"{path}: {len(record['instances'])} {record['task']} results -> {output_dir}/{stem}.png")


def list_images(location: str) -> list[str]:
    """One image file, or the image files of a folder (sorted); errors name the path."""
    path = Path(location)
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise FileNotFoundError(f"--images {location} does not exist; pass an image folder or file")
    files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"--images {location} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def load_categories(path: str, num_classes: int) -> Categories:
    """The dataset's categories.json, or numbered classes (all things) when there is none."""
    if path:
        categories = Categories.load(path)
        if categories.num_classes != num_classes:
            raise ValueError(
                f"{path} lists {categories.num_classes} categories but model.num_classes is {num_classes}; "
                "pass the categories of the dataset the model was trained on"
            )
        return categories
    return Categories.from_coco([{"id": k, "name": f"class {k}"} for k in range(num_classes)])


if __name__ == "__main__":
    main()

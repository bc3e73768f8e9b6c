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
Task, score threshold and batch size come from the config (`inference.*`) or the flags below; a
`.keras` model brings its own test-time resize, task, thresholds and class names (flags still win).
Any size or aspect ratio works, EXIF orientation is applied, grayscale and RGBA images are converted.
An image that cannot be read is skipped with one line, a truncated JPEG gets a warning naming it; the
last line counts written and skipped images. Exit status: 0 all written, 1 some skipped, 2 bad input.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cli

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def parse_args(argv=None):
    parser = cli.parser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a saved .keras model (e.g. a converted official checkpoint)")
    source.add_argument("--weights", help="weights for the configured model: detectron2 .pkl or Keras .weights.h5")
    parser.add_argument("--images", required=True, help="image folder (or one image file)")
    parser.add_argument("--output", default="images/res", help="where overlays and JSON go (default: images/res)")
    parser.add_argument(
        "--categories", default=None, help="categories.json (default: the model's, or data.categories_file)"
    )
    parser.add_argument("--task", choices=("instance", "panoptic", "semantic"), help="overrides inference.task")
    parser.add_argument("--score_threshold", type=float, help="overrides inference.score_threshold")
    parser.add_argument("--batch_size", type=int, help="overrides inference.batch_size")
    parser.add_argument("--device", default=None, help="TensorFlow device, e.g. /GPU:0 or /CPU:0")
    cli.add_config_arguments(parser)
    return cli.parse(parser, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from inference.loading import model_settings, settings_categories, settings_overrides

    settings = model_settings(args.model) if args.model else {}
    config = cli.config_from_args(args, defaults=settings_overrides(settings))
    for key, value in (
        ("task", args.task),
        ("score_threshold", args.score_threshold),
        ("batch_size", args.batch_size),
    ):
        if value is not None:
            config.set(f"inference.{key}", value)
    config.validate()
    image_paths = list_images(args.images)

    import contextlib

    tf = cli.import_tensorflow()

    from inference.loading import load_model
    from inference.predictor import Predictor

    with tf.device(args.device) if args.device else contextlib.nullcontext():
        model = load_model(config, args.model, args.weights)
        categories_file = args.categories or config.data.categories_file
        saved = settings_categories(settings)
        categories = (
            saved
            if saved is not None and not categories_file
            else load_categories(categories_file, config.model.num_classes)
        )
        predictor = Predictor(model, config, isthing=categories.isthing)
        # only results that can reach the threshold are drawn and written: make no full-size mask for others
        predictor.postprocess.min_score = config.inference.score_threshold
        written, skipped = run(
            predictor,
            image_paths,
            args.output,
            categories,
            config.inference.score_threshold,
            config.inference.batch_size,
        )
    print(f"{written} images written to {args.output}, {len(skipped)} skipped" + (" (see above)" if skipped else ""))
    return cli.EXIT_FAILED if skipped else cli.EXIT_OK


def run(predictor, image_paths, output_dir, categories, score_threshold: float, batch_size: int):
    """Predicts `image_paths` in batches and writes `<stem>.png` overlays and `<stem>.json` results.

    An image that cannot be read or written is reported in one line and skipped. Returns (written, skipped paths).
    """
    import cv2

    from inference.postprocess import InstanceResult, PanopticResult
    from inference.predictor import read_image
    from inference.results_json import result_to_json
    from inference.visualize import draw_instances, draw_panoptic, draw_semantic

    os.makedirs(output_dir, exist_ok=True)
    names = categories.names
    written, skipped = 0, []
    for start in range(0, len(image_paths), batch_size):
        paths, images = [], []
        for path in image_paths[start : start + batch_size]:
            try:
                images.append(read_image(path))
                paths.append(path)
            except (OSError, ValueError) as e:
                print(f"skipped {path}: {cli.one_line(e)}", file=sys.stderr, flush=True)
                skipped.append(path)
        if not images:
            continue
        for path, image, result in zip(paths, images, predictor(images), strict=True):
            if isinstance(result, InstanceResult):
                overlay = draw_instances(image, result, names, score_threshold)
            elif isinstance(result, PanopticResult):
                overlay = draw_panoptic(image, result, names)
            else:
                overlay = draw_semantic(image, result, names)
            stem = Path(path).stem
            png = os.path.join(output_dir, f"{stem}.png")
            if not cv2.imwrite(png, overlay[..., ::-1]):
                raise OSError(f"cannot write {png}; check that --output {output_dir} is writable and not full")
            record = result_to_json(result, Path(path).name, categories.ids, names, score_threshold)
            with open(os.path.join(output_dir, f"{stem}.json"), "w") as f:
                json.dump(record, f)
            written += 1
            print(f"{path}: {len(record['instances'])} {record['task']} results -> {png}")
    return written, skipped


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


def load_categories(path: str, num_classes: int):
    """The dataset's categories.json, or numbered classes (all things) when there is none."""
    from data.categories import Categories

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
    sys.exit(cli.run(main))

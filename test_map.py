"""Evaluate segmentation: a model on a validation set, or predictions made elsewhere.

A model (`--model` a .keras file, or `--weights` a detectron2 .pkl / Keras .weights.h5 for the model of
`--preset/--config/--set`) on a validation set, with a progress bar; the task (instance, panoptic,
semantic) comes from the config or `--task`:

    # COCO JSON: images folder + instances JSON (mask and box AP) ...
    python test_map.py --model mask2former_r50_coco.keras --images coco/val2017 \\
        --gt coco/annotations/instances_val2017.json
    # ... or + panoptic JSON and its PNG folder (PQ; with --task semantic: mIoU)
    python test_map.py --weights model_final_94dc52.pkl --preset coco_panoptic --images coco/val2017 \\
        --gt coco/annotations/panoptic_val2017.json --gt-dir coco/annotations/panoptic_val2017
    # TFRecords written by convert_coco_to_tfrecord.py (default: data.val_files)
    python test_map.py --model mask2former_r50_coco.keras --tfrecords "datasets/coco/tfrecords/val-*.tfrecord"

Predictions made elsewhere (the kind is recognised from the files):

    # COCO results JSON (segmentation and/or bbox entries) against COCO instances
    python test_map.py --gt instances_val2017.json --predictions results.json --output metrics.json
    # COCO panoptic JSON + PNG folder against the panoptic ground truth
    python test_map.py --gt panoptic_val2017.json --gt-dir panoptic_val2017 \\
        --predictions panoptic_pred.json --pred-dir panoptic_pred --output metrics.json

It prints a table and writes `metrics.json`: `{"segm": {"AP": ..., 12 COCO stats}, "bbox": {...}}`,
for panoptic `{"All": {"pq", "sq", "rq", "n"}, "Things": ..., "Stuff": ..., "per_class": {id: ...}}`,
for semantic `{"mIoU", "fwIoU", "mACC", "pACC", "per_class": {name: {"IoU", "ACC"}}}`.
On the cocoapi fake results (`../shared/testdata/coco_eval`) it prints segm AP 31.95, bbox AP 50.46.
The ground truth is checked before any work (unknown category ids, negative areas, polygons of fewer
than 3 points, annotations of missing images: one line naming the file and the annotation id). A
`.keras` model brings its own test-time resize, task and thresholds. Exit status: 0 done, 2 bad input.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import cli
from config import ConfigError


def parse_args(argv=None):
    parser = cli.parser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a saved .keras model to evaluate (e.g. a converted official checkpoint)")
    source.add_argument("--weights", help="weights of the configured model: detectron2 .pkl or Keras .weights.h5")
    source.add_argument("--predictions", help="predictions made elsewhere: COCO results JSON or COCO panoptic JSON")
    parser.add_argument("--gt", default=None, help="ground truth: COCO instances JSON or COCO panoptic JSON")
    parser.add_argument("--gt_dir", default=None, help="panoptic ground-truth PNG folder (default: --gt without .json)")
    parser.add_argument(
        "--pred_dir", default=None, help="panoptic prediction PNG folder (default: --predictions without .json)"
    )
    parser.add_argument("--images", default=None, help="image folder of the --gt JSON (model evaluation)")
    parser.add_argument("--tfrecords", default=None, help="TFRecord file pattern (default: data.val_files)")
    parser.add_argument("--task", choices=("instance", "panoptic", "semantic"), help="overrides inference.task")
    parser.add_argument("--batch_size", type=int, help="overrides inference.batch_size")
    parser.add_argument("--device", default=None, help="TensorFlow device, e.g. /GPU:0 or /CPU:0")
    parser.add_argument("--output", default="metrics.json", help="where to write the metrics JSON")
    parser.add_argument("--workers", type=int, default=None, help="threads for panoptic images (default: CPUs, max 8)")
    cli.add_config_arguments(parser)
    return cli.parse(parser, argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.gt:
        from evaluation.ground_truth import check_ground_truth

        try:
            check_ground_truth(args.gt)
        except (FileNotFoundError, ValueError) as e:
            sys.exit(f"error: {e}")
    from evaluation.tables import coco_table, panoptic_table, semantic_table
    from jsonfile import read_json

    if args.predictions:
        if not args.gt:
            sys.exit("error: --predictions needs the ground truth as --gt")
        kind, metrics = evaluate_files(args)
        names = {}
        if kind == "panoptic":
            names = {c["id"]: c.get("name", "") for c in read_json(args.gt, "ground-truth").get("categories", [])}
    else:
        kind, metrics, names = evaluate_model_args(args)
    if kind == "panoptic":
        print(panoptic_table(metrics, names))
    elif kind == "semantic":
        print(semantic_table(metrics))
    else:
        print(coco_table(metrics))
    write_metrics(metrics, args.output)
    print(f"wrote {args.output}")
    return metrics


def evaluate_files(args) -> tuple[str, dict]:
    from evaluation.files import evaluate_prediction_files

    try:
        return evaluate_prediction_files(args.gt, args.predictions, args.gt_dir, args.pred_dir, args.workers)
    except (FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"error: {e.args[0] if e.args else e}")


def evaluate_model_args(args) -> tuple[str, dict, dict]:
    """--model / --weights on the COCO JSON (--gt, --images) or TFRecord (--tfrecords) validation set.

    Returns (task, metrics, {category id: name})."""
    try:
        from inference.loading import model_settings, settings_overrides

        settings = model_settings(args.model) if args.model else {}
        config = cli.config_from_args(args, defaults=settings_overrides(settings))
        if args.task:
            config.set("inference.task", args.task)
        if args.batch_size is not None:
            config.set("inference.batch_size", args.batch_size)
        config.validate()
        if args.gt and not args.images:
            raise ValueError("--gt with a model needs the image folder as --images (or evaluate --tfrecords)")
    except (ConfigError, ValueError) as e:
        sys.exit(f"error: {e}")

    tf = cli.import_tensorflow()

    from inference.loading import load_model
    from inference.model_evaluation import coco_json_eval_set, evaluate_model, tfrecord_eval_set

    task = config.inference.task
    with tf.device(args.device) if args.device else contextlib.nullcontext():
        try:
            model = load_model(config, args.model, args.weights)
            if args.gt:
                eval_set = coco_json_eval_set(config, args.gt, args.images, task, args.gt_dir)
            else:
                eval_set = tfrecord_eval_set(config, args.tfrecords or config.data.val_files, task)
            metrics = evaluate_model(
                model, eval_set, config, task, batch_size=config.inference.batch_size, progress=True
            )
        except (FileNotFoundError, KeyError, ValueError) as e:
            sys.exit(f"error: {e.args[0] if e.args else e}")
    categories = eval_set.categories
    return task, metrics, dict(zip(categories.ids, categories.names, strict=True))


def write_metrics(metrics: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(metrics, f, indent=1)


if __name__ == "__main__":
    sys.exit(cli.run(main))

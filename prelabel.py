"""Pre-label a folder of images for CVAT and labelme with a trained or converted model.

    python prelabel.py --model runs/mydata/model.keras --folder batch2 \\
        --categories datasets/mydata/categories.json --score-threshold 0.5
    python prelabel.py --weights runs/mydata/model.weights.h5 --config runs/mydata/config.json --folder batch2 \\
        --label-map "traffic light=signal" "person=" --cvat-shape mask --tolerance 1.0

`batch2/images/` holds the images (and an optional `batch2/annotations.xml` exported from CVAT). It writes
`batch2/annotations.xml` (upload to CVAT: "CVAT for images 1.1"), `batch2/images/<name>.json` (open
`batch2/images` in labelme), `batch2/visuals/` and `batch2/predictions/` (see inference/prelabel.py).
Killed or interrupted, the same command carries on with the images not yet done. An image that cannot be
read is skipped with one line. Exit status: 0 done; 1 some images skipped; 2 bad input or configuration
(one line naming the file or field and the fix).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.parser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a saved .keras model")
    source.add_argument("--weights", help="weights for the configured model: detectron2 .pkl or Keras .weights.h5")
    parser.add_argument("--folder", required=True, help="task folder with images/ (and optionally annotations.xml)")
    parser.add_argument("--categories", default=None, help="categories.json (default: data.categories_file)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="keep instances scoring at least this")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call")
    parser.add_argument("--label-map", nargs="+", default=[], metavar="CLASS=LABEL", help="model class -> tool label")
    parser.add_argument("--tolerance", type=float, default=0.5, help="polygon simplification, pixels (0 = exact)")
    parser.add_argument("--cvat-shape", choices=("polygon", "mask"), default="polygon", help="CVAT shape to write")
    parser.add_argument("--device", default=None, help="TensorFlow device, e.g. /GPU:0 or /CPU:0")
    cli.add_config_arguments(parser)
    return cli.parse(parser, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from data.categories import Categories
    from inference.prelabel import PrelabelError, PrelabelOptions, check_task, parse_label_map, prelabel

    # Bad input (options, config, categories, the folder, its annotations.xml) raises before the model loads;
    # cli.run prints its one line and exits 2.
    config = cli.config_from_args(args)
    config.set("inference.task", "instance")
    options = PrelabelOptions(
        folder=args.folder,
        score_threshold=args.score_threshold,
        batch_size=args.batch_size,
        label_map=parse_label_map(args.label_map),
        tolerance=args.tolerance,
        cvat_shape=args.cvat_shape,
    )
    if args.batch_size < 1 or not 0.0 <= args.score_threshold <= 1.0 or args.tolerance < 0:
        raise PrelabelError("--batch-size must be >= 1, --score-threshold in [0, 1], --tolerance >= 0")
    path = args.categories or config.data.categories_file
    if not path:
        raise PrelabelError("give --categories (the categories.json written beside the training shards)")
    categories = Categories.load(path)
    if categories.num_classes != config.model.num_classes and args.weights:
        raise PrelabelError(
            f"{path} lists {categories.num_classes} categories but model.num_classes is "
            f"{config.model.num_classes}; pass the categories of the dataset the model was trained on"
        )
    check_task(options, categories)

    tf = cli.import_tensorflow()

    from inference.loading import load_model
    from inference.predictor import Predictor

    with tf.device(args.device) if args.device else contextlib.nullcontext():
        model = load_model(config, args.model, args.weights)
        if categories.num_classes != config.model.num_classes:
            raise PrelabelError(
                f"{path} lists {categories.num_classes} categories but the model has {config.model.num_classes} "
                "classes; pass the categories of the dataset the model was trained on"
            )
        stats = prelabel(Predictor(model, config, isthing=categories.isthing), categories, options)
    print(
        f"predicted {stats.predicted} images ({stats.instances} instances), {len(stats.skipped)} skipped"
        f"{' (see above; a rerun retries them)' if stats.skipped else ''}; {stats.resumed} done before, "
        f"{stats.kept} labelled images kept -> {args.folder}/annotations.xml, images/*.json, visuals/, predictions/"
    )
    return cli.EXIT_FAILED if stats.skipped else cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main))

"""Exports a trained Mask2Former for serving: TF SavedModel (TF Serving), LiteRT or ONNX.

    python -m tools.export mask2former_r50_coco.keras export/m2f --format saved_model
    python -m tools.export mask2former_r50_coco.keras m2f.tflite --format litert --size 800x1216 --precision float16
    python -m tools.export mask2former_r50_coco.keras m2f.onnx --format onnx --size 800x1216
    python -m tools.export --weights runs/m/model.weights.h5 --config runs/m/config.json m2f --format saved_model

MODEL is a `.keras` file, or give `--weights` (detectron2 `.pkl` or Keras `.weights.h5`) for the model
that `--preset/--config/--set` describe, as test.py takes them. The SavedModel's result signatures use
the test sizes, task and thresholds of the config (`data.min_size_test`, `inference.*`; `--task`
overrides) and the class names of `--categories` (default `data.categories_file`). LiteRT and ONNX
hold the network only (`pred_logits`, `pred_masks`) at a fixed `--size`. See inference/export.py for the signatures and README "Deployment" for serving.
"""

from __future__ import annotations

import argparse
import sys

import cli  # noqa: E402

FORMATS = ("saved_model", "litert", "onnx")


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.parser(__doc__)
    parser.add_argument("model", nargs="?", help="a saved .keras model (or give --weights)")
    parser.add_argument("output", help="SavedModel folder, .tflite or .onnx file to write")
    parser.add_argument("--weights", help="weights for the configured model: detectron2 .pkl or Keras .weights.h5")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--task", choices=("instance", "panoptic", "semantic"), help="overrides inference.task")
    parser.add_argument("--categories", default=None, help="categories.json (default: data.categories_file)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--size", type=parse_size, help="fixed network input HxW, e.g. 800x1216 (LiteRT needs one)")
    size.add_argument(
        "--dynamic",
        action="store_true",
        help="any input height and width (SavedModel logits signature; the default there)",
    )
    parser.add_argument("--precision", default="float32", choices=("float32", "float16"), help="LiteRT weights")
    cli.add_config_arguments(parser)
    args = cli.parse(parser, argv)
    if args.weights is not None and args.model is not None:
        parser.error("give MODEL (.keras) or --weights, not both")
    if args.weights is None and args.model is None:
        parser.error("give MODEL (a .keras file) or --weights with the config it belongs to")
    if args.precision == "float16" and args.format != "litert":
        parser.error("--precision float16 is for --format litert (float16 weights)")
    if args.format == "onnx" and args.dynamic:
        # tf2onnx converts free height and width, but onnxruntime then fails in the decoder's
        # cross-attention (a Reshape whose batch axis tf2onnx's graph loses)
        parser.error(
            "--dynamic is not supported for --format onnx (onnxruntime fails on free height and width); "
            "export one model per input size with --size HxW, e.g. --size 800x1216"
        )
    if args.format in ("litert", "onnx") and args.size is None:
        parser.error(f"--format {args.format} needs a fixed --size HxW, e.g. --size 800x1216")
    return args


def parse_size(text: str) -> tuple[int, int]:
    """'800x1216' -> (800, 1216)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must look like HxW, e.g. 800x1216") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return height, width


def main(argv=None) -> int:
    args = parse_args(argv)
    config = cli.config_from_args(args)
    if args.task:
        config.set("inference.task", args.task)
    cli.import_tensorflow()
    from data.categories import Categories
    from inference import export
    from inference.loading import load_model

    network = load_model(config, model_path=args.model, weights_path=args.weights)
    categories_file = args.categories or config.data.categories_file
    categories = Categories.load(categories_file) if categories_file else None
    if categories is not None and categories.num_classes != config.model.num_classes:
        raise ValueError(
            f"{categories_file} lists {categories.num_classes} categories but the model predicts "
            f"{config.model.num_classes}; pass the categories of the dataset the model was trained on"
        )
    if args.format == "saved_model":
        export.export_saved_model(
            network, args.output, export.ExportSettings.from_config(config, categories), args.size
        )
    elif args.format == "litert":
        export.export_litert(network, args.output, args.size, args.precision)
    else:
        export.export_onnx(network, args.output, args.size)
    print(f"wrote {args.output} ({args.format})")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main))

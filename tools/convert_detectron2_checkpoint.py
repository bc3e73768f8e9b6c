"""Converts an official detectron2 Mask2Former checkpoint to a self-contained Keras model file.

    python tools/convert_detectron2_checkpoint.py model_final_3c8ec9.pkl mask2former_r50_coco.keras
    python tools/convert_detectron2_checkpoint.py coco_instance_r50 out.keras      # model-zoo name: downloads

The architecture (classes, queries, depths, widths) is read from the checkpoint's shapes; the file also
carries the inference settings of the official recipe with that class count (133: COCO panoptic,
150: ADE20K semantic, else COCO instance: test-time resize, task, thresholds), which test.py and
test_map.py --model use. The result loads with no other argument:

    import keras, model   # importing `model` registers the layers
    m = keras.saving.load_model("mask2former_r50_coco.keras")
    outputs = m(images)   # (B, H, W, 3) RGB 0..255
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli  # noqa: E402
from config import Mask2FormerConfig  # noqa: E402

# Model-zoo names, known without importing TensorFlow (for --help); model.checkpoint.MODEL_ZOO has the URLs.
ZOO_NAMES = ("R-50", "R-101", "coco_instance_r50", "coco_instance_r101", "coco_panoptic_r50", "ade20k_semantic_r50")
OFFICIAL_PRESET = {133: "coco_panoptic", 150: "ade20k_semantic"}  # by class count; else coco_instance


def convert(source: str, output: str, num_heads: int = 8) -> str:
    """Reads `source` (a .pkl path or a model-zoo name), writes `output` (.keras); returns the load report."""
    from inference.loading import save_model
    from model import build_model
    from model.checkpoint import (
        MODEL_ZOO,
        download,
        infer_model_config,
        load_detectron2_state,
        read_detectron2_checkpoint,
    )

    path = download(source) if source in MODEL_ZOO else source
    state = read_detectron2_checkpoint(path)
    found = infer_model_config(state, num_heads=num_heads)
    config = Mask2FormerConfig.preset(OFFICIAL_PRESET.get(found["num_classes"], "coco_instance"))
    for key, value in found.items():
        setattr(config.model, key, value)
    model = build_model(config.validate())
    report = load_detectron2_state(model, state)
    save_model(model, output, config)
    return f"{report}\nwrote {output} ({config.model.num_classes} classes, {config.model.num_queries} queries)"


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("source", help=f"detectron2 .pkl file, or a model-zoo name: {', '.join(ZOO_NAMES)}")
    parser.add_argument("output", help="output .keras file")
    parser.add_argument("--num-heads", type=int, default=8, help="attention heads (not readable from shapes)")
    args = cli.parse(parser, argv)
    if not args.output.endswith(".keras"):
        parser.error(f"output {args.output} must end in .keras")
    cli.import_tensorflow()
    print(convert(args.source, args.output, args.num_heads))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

"""Converts an official detectron2 Mask2Former checkpoint to a self-contained Keras model file.

    python tools/convert_detectron2_checkpoint.py model_final_3c8ec9.pkl mask2former_r50_coco.keras
    python tools/convert_detectron2_checkpoint.py coco_instance_r50 out.keras      # model-zoo name: downloads

The architecture (classes, queries, depths, widths) is read from the checkpoint's shapes. The result
loads with no other argument:

    import keras, model   # importing `model` registers the layers
    m = keras.saving.load_model("mask2former_r50_coco.keras")
    outputs = m(images)   # (B, H, W, 3) RGB 0..255
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import Mask2FormerConfig  # noqa: E402
from model import build_model  # noqa: E402
from model.checkpoint import (  # noqa: E402
    MODEL_ZOO,
    CheckpointError,
    download,
    infer_model_config,
    load_detectron2_state,
    read_detectron2_checkpoint,
)


def convert(source: str, output: str, num_heads: int = 8) -> str:
    """Reads `source` (a .pkl path or a model-zoo name), writes `output` (.keras); returns the load report."""
    path = download(source) if source in MODEL_ZOO else source
    state = read_detectron2_checkpoint(path)
    config = Mask2FormerConfig()
    for key, value in infer_model_config(state, num_heads=num_heads).items():
        setattr(config.model, key, value)
    model = build_model(config.validate())
    report = load_detectron2_state(model, state)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    model.save(output)
    return f"{report}\nwrote {output} ({config.model.num_classes} classes, {config.model.num_queries} queries)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help=f"detectron2 .pkl file, or a model-zoo name: {', '.join(MODEL_ZOO)}")
    parser.add_argument("output", help="output .keras file")
    parser.add_argument("--num-heads", type=int, default=8, help="attention heads (not readable from shapes)")
    args = parser.parse_args()
    if not args.output.endswith(".keras"):
        parser.error(f"output {args.output} must end in .keras")
    try:
        print(convert(args.source, args.output, args.num_heads))
    except CheckpointError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()

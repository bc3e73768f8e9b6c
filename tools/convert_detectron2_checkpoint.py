"""Converts an official Mask2Former checkpoint to a self-contained Keras model file.

    python -m tools.convert_detectron2_checkpoint model_final_3c8ec9.pkl mask2former_r50_coco.keras
    python -m tools.convert_detectron2_checkpoint coco_instance_r50 out.keras      # model-zoo name: downloads
    python -m tools.convert_detectron2_checkpoint path/to/hf_model out.keras       # model.safetensors + config.json
    python -m tools.convert_detectron2_checkpoint --list                           # the model zoo (markdown)

The architecture (backbone, classes, queries, depths, widths) is read from the checkpoint's shapes
(a Hugging Face directory: from its config.json). The file also carries the inference settings of the
official recipe (the model-zoo name's preset; else by class count: 133 COCO panoptic, 150 ADE20K
semantic, otherwise COCO instance: test-time resize, task, thresholds), which test.py and
test_map.py --model use. The result loads with no other argument:

    import keras, model   # importing `model` registers the layers
    m = keras.saving.load_model("mask2former_r50_coco.keras")
    outputs = m(images)   # (B, H, W, 3) RGB 0..255
"""

import sys

import cli  # noqa: E402
from config import PRESETS, Mask2FormerConfig  # noqa: E402
from model_zoo import MODEL_ZOO, NOT_PUBLISHED, ZOO_MODELS, describe_backbone  # noqa: E402

OFFICIAL_PRESET = {133: "coco_panoptic", 150: "ade20k_semantic"}  # by class count; else coco_instance


def convert_checkpoint(source: str, num_heads: int = 8):
    """(model, config, load report) for `source`: a .pkl path, a model-zoo name or a Hugging Face directory.

    `config` is the zoo name's preset (else the official recipe for the class count) with the
    checkpoint's architecture."""
    from model import build_model
    from model.checkpoints import (
        download,
        infer_model_config,
        is_hf_checkpoint,
        load_detectron2_state,
        read_detectron2_checkpoint,
        read_hf_checkpoint,
    )

    if is_hf_checkpoint(source):
        state, fields = read_hf_checkpoint(source)
    else:
        path = download(source) if source in MODEL_ZOO or source in NOT_PUBLISHED else source
        state = read_detectron2_checkpoint(path)
        fields = infer_model_config(state, num_heads=num_heads)
    preset = source if source in PRESETS else OFFICIAL_PRESET.get(fields["num_classes"], "coco_instance")
    config = Mask2FormerConfig.preset(preset)
    for key, value in fields.items():
        setattr(config.model, key, value)
    model = build_model(config.validate())
    return model, config, load_detectron2_state(model, state)


def convert(source: str, output: str, num_heads: int = 8) -> str:
    """Converts `source` (see `convert_checkpoint`) and writes `output` (.keras with its inference settings);
    returns the load report."""
    from inference.loading import save_model

    model, config, report = convert_checkpoint(source, num_heads)
    save_model(model, output, config)
    m = config.model
    return (
        f"{report}\nwrote {output} ({describe_backbone(m)}, {m.num_classes} classes, {m.num_queries} queries, "
        f"{m.num_decoder_layers} decoder layers)"
    )


def zoo_table() -> str:
    """The model zoo as a markdown table: name, backbone, task, classes, queries, paper result (no Keras import)."""
    rows = ["| name | backbone | task | classes | queries | paper result |", "|---|---|---|---|---|---|"]
    for name, (_, result) in ZOO_MODELS.items():
        config = PRESETS[name]()
        backbone = describe_backbone(config.model).split(" (")[0] + (" (IN21k)" if name.endswith("_in21k") else "")
        rows.append(
            f"| `{name}` | {backbone} | {config.inference.task} | {config.model.num_classes} "
            f"| {config.model.num_queries} | {result} |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument(
        "source", nargs="?", help="detectron2 .pkl, model-zoo name (see --list), or Hugging Face directory"
    )
    parser.add_argument("output", nargs="?", help="output .keras file")
    parser.add_argument("--num-heads", type=int, default=8, help="attention heads (not readable from shapes)")
    parser.add_argument("--list", action="store_true", help="print the model zoo as a markdown table and exit")
    args = cli.parse(parser, argv)
    if args.list:
        print(zoo_table())
        return 0
    if args.source is None or args.output is None:
        parser.error("give a source and an output .keras file (or --list)")
    if not args.output.endswith(".keras"):
        parser.error(f"output {args.output} must end in .keras")
    cli.import_tensorflow()
    print(convert(args.source, args.output, args.num_heads))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

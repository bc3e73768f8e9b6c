"""The architecture of a checkpoint, read from its tensor shapes: `ModelConfig` fields.

    fields = infer_model_config(state)                          # backbone, classes, queries, widths, layers
    differences = architecture_differences(fields, config.model)  # {} when the checkpoint fits

How to say a difference on the command line (`--preset`, `--set`) is the scripts' business:
`cli.architecture_mismatch`.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace

import numpy as np

from model.checkpoints.errors import CheckpointError
from model.checkpoints.names import canonical_names, name_table


def count_blocks(state: dict, prefix: str) -> int:
    """How many numbered blocks `{prefix}{i}.` the state holds (the largest index + 1; 0 when none)."""
    indices = {int(n[len(prefix) :].split(".")[0]) for n in state if n.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def infer_model_config(state: dict[str, np.ndarray], num_heads: int = 8) -> dict:
    """Architecture read from a checkpoint's shapes (`num_heads` cannot be read; official: 8).

    Returns a dict of `ModelConfig` fields: the backbone (`backbone` and the `backbone_*` fields of a
    ResNet, or the `swin_*` fields of a Swin: width, depths, heads and window from the relative position
    bias tables), classes, queries, widths and layer counts.
    """
    state = canonical_names(state)

    for name in ("sem_seg_head.predictor.class_embed.weight", "sem_seg_head.predictor.query_feat.weight"):
        if name not in state:
            raise CheckpointError(f"tensor {name} is missing; this is not a full Mask2Former checkpoint")
    query_feat = state["sem_seg_head.predictor.query_feat.weight"]
    pd = "sem_seg_head.pixel_decoder"
    offsets = state[f"{pd}.transformer.encoder.layers.0.self_attn.sampling_offsets.weight"]
    return {
        "num_classes": int(state["sem_seg_head.predictor.class_embed.weight"].shape[0]) - 1,
        "num_queries": int(query_feat.shape[0]),
        **infer_backbone_config(state),
        "hidden_dim": int(query_feat.shape[1]),
        "num_heads": num_heads,
        "decoder_ffn_dim": int(state["sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight"].shape[0]),
        "num_decoder_layers": count_blocks(state, "sem_seg_head.predictor.transformer_ffn_layers."),
        "pixel_decoder_dim": int(state[f"{pd}.mask_features.weight"].shape[1]),
        "mask_dim": int(state[f"{pd}.mask_features.weight"].shape[0]),
        "encoder_layers": count_blocks(state, f"{pd}.transformer.encoder.layers."),
        "encoder_ffn_dim": int(state[f"{pd}.transformer.encoder.layers.0.linear1.weight"].shape[0]),
        "deformable_points": int(offsets.shape[0]) // (num_heads * 3 * 2),
    }


def infer_backbone_config(state: dict[str, np.ndarray]) -> dict:
    """The backbone's `ModelConfig` fields from `backbone.*` shapes: a ResNet or a Swin."""
    if "backbone.stem.conv1.weight" in state:
        return {
            "backbone": "resnet",
            "backbone_stage_blocks": tuple(count_blocks(state, f"backbone.res{i}.") for i in range(2, 6)),
            "backbone_stem_channels": int(state["backbone.stem.conv1.weight"].shape[0]),
            "backbone_res2_channels": int(state["backbone.res2.0.conv3.weight"].shape[0]),
        }
    if "backbone.patch_embed.proj.weight" in state:
        tables = [state[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(4)]
        return {
            "backbone": "swin",
            "swin_embed_dim": int(state["backbone.patch_embed.proj.weight"].shape[0]),
            "swin_depths": tuple(count_blocks(state, f"backbone.layers.{i}.blocks.") for i in range(4)),
            "swin_num_heads": tuple(int(t.shape[1]) for t in tables),
            "swin_window_size": (round(float(np.sqrt(tables[0].shape[0]))) + 1) // 2,  # (2w - 1)^2 rows
        }
    raise CheckpointError(
        "neither backbone.stem.conv1.weight (ResNet) nor backbone.patch_embed.proj.weight (Swin) is in the "
        "checkpoint; it has no backbone this model knows"
    )


BACKBONE_FIELDS = {
    "resnet": ("backbone_stage_blocks", "backbone_stem_channels", "backbone_res2_channels"),
    "swin": ("swin_embed_dim", "swin_depths", "swin_num_heads", "swin_window_size"),
}


def model_architecture(model) -> dict:
    """`infer_model_config` of a built model's own tensor shapes: its architecture, whatever its backbone."""
    shapes = {entry.name: SimpleNamespace(shape=entry.shape) for entry in name_table(model)}
    return infer_model_config(shapes, num_heads=model.num_heads)


PRODUCT = "num_heads x deformable_points"  # compared as a product: the points are read assuming the heads


def architecture_differences(found: dict, model_config, ignore: Iterable[str] = ()) -> dict[str, tuple]:
    """How checkpoint fields `found` (from `infer_model_config`) differ from `model_config` (a `ModelConfig`,
    or a dict such as `model_architecture` returns): field -> (checkpoint value, configured value), in the
    order of `found`, then `PRODUCT` when the heads times the deformable points differ; {} when it fits.
    Fields in `ignore` are not compared."""
    if isinstance(model_config, dict):
        model_config = SimpleNamespace(**model_config)
    found = {k: v for k, v in found.items() if k not in set(ignore)}
    found_points = found.pop("deformable_points", model_config.deformable_points) * model_config.num_heads
    differences = {
        k: (v, getattr(model_config, k, None))
        for k, v in found.items()
        if _as_tuple(getattr(model_config, k, None)) != _as_tuple(v)
    }
    if found_points != model_config.num_heads * model_config.deformable_points:
        differences[PRODUCT] = (found_points, model_config.num_heads * model_config.deformable_points)
    return differences


def _as_tuple(value):
    return tuple(value) if isinstance(value, list | tuple) else value

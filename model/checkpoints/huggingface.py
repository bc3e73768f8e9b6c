"""Hugging Face hub Mask2Former checkpoints: a directory as `transformers`' `save_pretrained` writes it
(`model.safetensors` + `config.json`), read without torch and turned into detectron2 names for our loader.

    state, fields = read_hf_checkpoint("mask2former-swin-tiny-coco-instance")   # fields: ModelConfig values
    model = load_hf_checkpoint("mask2former-swin-tiny-coco-instance")          # built and loaded

The name mapping (`hf_to_detectron2`) is also what the parity tests use. Backbone names are one rule
list per backbone (`BACKBONE_RULES`), so a new backbone adds its rules in one place.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from model.checkpoints.errors import CheckpointError

# (pattern, replacement); STAGE and CONV are filled from the ResNet stage and layer indices.
BACKBONE_RULES = {
    "resnet": [
        (r"model\.pixel_level_module\.encoder\.embedder\.embedder\.convolution\.", "backbone.stem.conv1."),
        (r"model\.pixel_level_module\.encoder\.embedder\.embedder\.normalization\.", "backbone.stem.conv1.norm."),
        (
            r"model\.pixel_level_module\.encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
            "STAGE.\\2.shortcut.",
        ),
        (
            r"model\.pixel_level_module\.encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
            "STAGE.\\2.shortcut.norm.",
        ),
        (
            r"model\.pixel_level_module\.encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.",
            "STAGE.\\2.CONV.",
        ),
        (
            r"model\.pixel_level_module\.encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.",
            "STAGE.\\2.CONV.norm.",
        ),
    ],
}

_SWIN = r"model\.pixel_level_module\.encoder\.swin\."
BACKBONE_RULES["swin"] = [
    (_SWIN + r"embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
    (_SWIN + r"embeddings\.norm\.", "backbone.patch_embed.norm."),
    (
        _SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.relative_position_bias\.",
        "backbone.layers.\\1.blocks.\\2.attn.",
    ),
    (
        _SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.o_proj\.",
        "backbone.layers.\\1.blocks.\\2.attn.proj.",
    ),
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", "backbone.layers.\\1.blocks.\\2.norm1."),
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", "backbone.layers.\\1.blocks.\\2.norm2."),
    (_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.", "backbone.layers.\\1.blocks.\\2.mlp."),
    (_SWIN + r"encoder\.layers\.(\d+)\.downsample\.", "backbone.layers.\\1.downsample."),
    # the official per-stage output norms (norm0..3)
    (r"model\.pixel_level_module\.encoder\.hidden_states_norms\.stage(\d)\.", "NORM."),
]
# `save_pretrained` writes the Swin backbone under its transformers 4.x names (as the hub files are):
# renamed to the in-memory 5.x names first.
_HF_SAVED_SWIN = [
    (r"(model\.pixel_level_module\.encoder\.)(embeddings\.|encoder\.layers\.)", "\\1swin.\\2"),
    (r"\.attention\.self\.query\.", ".attention.q_proj."),
    (r"\.attention\.self\.key\.", ".attention.k_proj."),
    (r"\.attention\.self\.value\.", ".attention.v_proj."),
    (r"\.attention\.self\.relative_position_", ".attention.relative_position_bias.relative_position_"),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"(\.blocks\.\d+)\.intermediate\.dense\.", "\\1.mlp.fc1."),
    (r"(\.blocks\.\d+)\.output\.dense\.", "\\1.mlp.fc2."),
]
# HF's SwinModel keeps a final `layernorm` that its backbone never applies; the official model has none.
_HF_UNUSED = re.compile(r"model\.pixel_level_module\.encoder\.swin\.layernorm\..*")
# q/k/v projections that the official model stacks into one tensor: (pattern, official stacked name).
_STACKED = [
    (
        r"model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)",
        "sem_seg_head.predictor.transformer_self_attention_layers.{0}.self_attn.in_proj_{2}",
    ),
    (
        _SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)",
        "backbone.layers.{0}.blocks.{1}.attn.qkv.{3}",
    ),
]

HEAD_RULES = [
    # pixel decoder
    (r"model\.pixel_level_module\.decoder\.level_embed", "sem_seg_head.pixel_decoder.transformer.level_embed"),
    (r"model\.pixel_level_module\.decoder\.input_projections\.", "sem_seg_head.pixel_decoder.input_proj."),
    (
        r"model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.",
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.\\1.norm1.",
    ),
    (
        r"model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.final_layer_norm\.",
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.\\1.norm2.",
    ),
    (
        r"model\.pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.fc(\d)\.",
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.\\1.linear\\2.",
    ),
    (
        r"model\.pixel_level_module\.decoder\.encoder\.layers\.",
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.",
    ),
    (r"model\.pixel_level_module\.decoder\.mask_projection\.", "sem_seg_head.pixel_decoder.mask_features."),
    (r"model\.pixel_level_module\.decoder\.(adapter_1|layer_1)\.0\.", "sem_seg_head.pixel_decoder.\\1."),
    (r"model\.pixel_level_module\.decoder\.(adapter_1|layer_1)\.1\.", "sem_seg_head.pixel_decoder.\\1.norm."),
    # transformer decoder
    (r"model\.transformer_module\.queries_embedder\.", "sem_seg_head.predictor.query_embed."),
    (r"model\.transformer_module\.queries_features\.", "sem_seg_head.predictor.query_feat."),
    (r"model\.transformer_module\.level_embed\.", "sem_seg_head.predictor.level_embed."),
    (
        r"model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.",
        "sem_seg_head.predictor.transformer_self_attention_layers.\\1.self_attn.out_proj.",
    ),
    (
        r"model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.",
        "sem_seg_head.predictor.transformer_self_attention_layers.\\1.norm.",
    ),
    (
        r"model\.transformer_module\.decoder\.layers\.(\d+)\.cross_attn\.",
        "sem_seg_head.predictor.transformer_cross_attention_layers.\\1.multihead_attn.",
    ),
    (
        r"model\.transformer_module\.decoder\.layers\.(\d+)\.cross_attn_layer_norm\.",
        "sem_seg_head.predictor.transformer_cross_attention_layers.\\1.norm.",
    ),
    (
        r"model\.transformer_module\.decoder\.layers\.(\d+)\.fc(\d)\.",
        "sem_seg_head.predictor.transformer_ffn_layers.\\1.linear\\2.",
    ),
    (
        r"model\.transformer_module\.decoder\.layers\.(\d+)\.final_layer_norm\.",
        "sem_seg_head.predictor.transformer_ffn_layers.\\1.norm.",
    ),
    (r"model\.transformer_module\.decoder\.layernorm\.", "sem_seg_head.predictor.decoder_norm."),
    (
        r"model\.transformer_module\.decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.",
        "sem_seg_head.predictor.mask_embed.layers.\\1.",
    ),
    (r"class_predictor\.", "sem_seg_head.predictor.class_embed."),
    (r"criterion\.empty_weight", "criterion.empty_weight"),
]


def hf_to_detectron2(hf_state) -> dict[str, np.ndarray]:
    """HF state dict (numpy arrays or torch tensors) -> detectron2-named numpy arrays, as an official checkpoint.

    Accepts the in-memory names of transformers 5 and the Swin names `save_pretrained` / hub files use.
    Raises `CheckpointError` naming the first tensor no rule maps.
    """
    state = {
        k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
        for k, v in hf_state.items()
        if not k.endswith("num_batches_tracked")
    }
    rules = [rule for backbone in BACKBONE_RULES.values() for rule in backbone] + HEAD_RULES
    out, stacked = {}, {}  # stacked: official name of a q/k/v stack -> {"q": .., "k": .., "v": ..}
    for name, value in state.items():
        if name.startswith("model.pixel_level_module.encoder.") and ".swin." not in name:
            for pattern, replacement in _HF_SAVED_SWIN:
                name = re.sub(pattern, replacement, name)
        if _HF_UNUSED.fullmatch(name):
            continue
        for pattern, target in _STACKED:
            split = re.fullmatch(pattern, name)
            if split:
                part = next(g for g in split.groups() if g in ("q", "k", "v"))
                stacked.setdefault(target.format(*split.groups()), {})[part] = value
                break
        else:
            for pattern, replacement in rules:
                match = re.match(pattern, name)
                if match:
                    new = re.sub(pattern, replacement, name, count=1)
                    if "STAGE" in new:
                        new = new.replace("STAGE", f"backbone.res{int(match[1]) + 2}")
                        new = new.replace("CONV", f"conv{int(match[3]) + 1}") if "CONV" in new else new
                    elif new.startswith("NORM."):
                        new = new.replace("NORM", f"backbone.norm{int(match[1]) - 1}")
                    out[new] = value
                    break
            else:
                raise CheckpointError(f"no detectron2 name for the Hugging Face tensor {name}")
    for name, parts in stacked.items():
        out[name] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    return out


def is_hf_checkpoint(path: str) -> bool:
    """True for a directory holding `config.json` (a `save_pretrained` output)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def hf_model_fields(hf_config: dict, source: str = "config.json") -> dict:
    """`ModelConfig` fields from a `transformers` `Mask2FormerConfig` dict (config.json)."""
    if hf_config.get("model_type") != "mask2former":
        raise CheckpointError(f"{source} describes a {hf_config.get('model_type')!r} model, not a mask2former one")
    backbone = hf_config.get("backbone_config") or {}
    kind = backbone.get("model_type")
    if kind == "resnet":
        if backbone.get("layer_type") != "bottleneck" or backbone.get("downsample_in_bottleneck"):
            raise CheckpointError(
                f"{source}: only bottleneck ResNets with the stride in the 3x3 conv (detectron2's) are supported"
            )
        fields = {
            "backbone": "resnet",
            "backbone_stage_blocks": tuple(backbone["depths"]),
            "backbone_stem_channels": int(backbone["embedding_size"]),
            "backbone_res2_channels": int(backbone["hidden_sizes"][0]),
        }
    elif kind == "swin":
        fields = {
            "backbone": "swin",
            "swin_embed_dim": int(backbone["embed_dim"]),
            "swin_depths": tuple(backbone["depths"]),
            "swin_num_heads": tuple(backbone["num_heads"]),
            "swin_window_size": int(backbone["window_size"]),
        }
    else:
        raise CheckpointError(f"{source}: backbone {kind!r} is not supported (resnet and swin are)")
    return {
        **fields,
        "num_classes": len(hf_config["id2label"]) if "id2label" in hf_config else int(hf_config["num_labels"]),
        "num_queries": int(hf_config["num_queries"]),
        "hidden_dim": int(hf_config["hidden_dim"]),
        "num_heads": int(hf_config["num_attention_heads"]),
        "decoder_ffn_dim": int(hf_config["dim_feedforward"]),
        "num_decoder_layers": int(hf_config["decoder_layers"]) - 1,  # HF counts prediction sets
        "pixel_decoder_dim": int(hf_config["feature_size"]),
        "mask_dim": int(hf_config["mask_feature_size"]),
        "encoder_layers": int(hf_config["encoder_layers"]),
        "encoder_ffn_dim": int(hf_config["encoder_feedforward_dim"]),
    }


def read_hf_checkpoint(directory: str) -> tuple[dict[str, np.ndarray], dict]:
    """(detectron2-named state, `ModelConfig` fields) of a `save_pretrained` directory, without torch."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    config_path = os.path.join(directory, "config.json")
    weights_path = os.path.join(directory, "model.safetensors")
    if not os.path.isfile(weights_path):
        raise CheckpointError(
            f"{directory} has config.json but no model.safetensors; save the model with "
            "save_pretrained(..., safe_serialization=True) or download model.safetensors from the hub"
        )
    try:
        with open(config_path) as f:
            hf_config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path} is not readable JSON ({e})") from None
    fields = hf_model_fields(hf_config, config_path)
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file ({e}); download it again") from None
    return hf_to_detectron2(tensors), fields


def load_hf_checkpoint(directory: str, config=None, dtype=None):
    """A built Mask2Former with the weights of `directory`, its architecture from config.json.

    `config`: a `Mask2FormerConfig` whose `model` section is updated to the checkpoint's (default: a new one).
    """
    from config import Mask2FormerConfig
    from model import build_model
    from model.checkpoints.names import load_detectron2_state

    state, fields = read_hf_checkpoint(directory)
    config = config if config is not None else Mask2FormerConfig()
    for key, value in fields.items():
        setattr(config.model, key, value)
    model = build_model(config.validate(), **({"dtype": dtype} if dtype else {}))
    try:
        load_detectron2_state(model, state)
    except CheckpointError as e:
        raise CheckpointError(f"{directory}: {e}") from None
    return model

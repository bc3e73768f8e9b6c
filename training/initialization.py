"""Initial weights: the ImageNet backbone (`train.backbone_weights`) or an official Mask2Former checkpoint
to fine-tune from (`train.init_checkpoint`, possibly with another number of classes).

    summary = initialize_weights(model, config.train)
"""

from __future__ import annotations

import os

from cli import architecture_mismatch
from model.checkpoints import (
    CheckpointError,
    download,
    group_names,
    infer_model_config,
    is_hf_checkpoint,
    load_detectron2_state,
    load_imagenet_backbone,
    model_architecture,
    read_detectron2_checkpoint,
    read_hf_checkpoint,
)
from model.swin import SwinTransformer
from model_zoo import MODEL_ZOO, NOT_PUBLISHED

CLASS_HEAD = "sem_seg_head.predictor.class_embed"


def resolve_weights(path_or_name: str) -> str:
    """A local file or Hugging Face directory, or a model-zoo name ("R-50", "R-50.pkl", "coco_instance_r50",
    ...) downloaded once."""
    if os.path.isfile(path_or_name) or is_hf_checkpoint(path_or_name):
        return path_or_name
    name = os.path.basename(path_or_name)
    name = name[: -len(".pkl")] if name.endswith(".pkl") else name
    if name in NOT_PUBLISHED:
        raise CheckpointError(f"{path_or_name} does not exist, and {NOT_PUBLISHED[name]}")
    if name in MODEL_ZOO:
        return download(name)  # a failed download raises CheckpointError naming the URL
    raise CheckpointError(
        f"{path_or_name} is neither a file nor a model-zoo name ({', '.join(MODEL_ZOO)}); check the path"
    )


def load_backbone(model, path_or_name: str) -> str:
    """Loads the `backbone.*` tensors of a detectron2 checkpoint (e.g. ImageNet `R-50.pkl`); all must be there.

    Swin backbones read Microsoft's `.pth`, the official converter's d2 pickle of torch tensors, or a numpy
    d2 pickle, without torch. Nothing is loaded unless every backbone tensor is present with the right shape.
    """
    path = resolve_weights(path_or_name)
    if isinstance(model.backbone, SwinTransformer):
        report = load_imagenet_backbone(model, path)
        return f"backbone from {path}: {len(report.loaded)} tensors"
    state = {k: v for k, v in read_detectron2_checkpoint(path).items() if k.startswith("backbone.")}
    try:
        report = load_detectron2_state(model, state, skip_prefixes=("sem_seg_head",))
    except CheckpointError as e:
        raise CheckpointError(f"{path} does not fit the backbone (nothing was loaded): {_problems(e)}") from None
    return f"backbone from {path}: {len(report.loaded)} tensors"


def load_for_finetuning(model, path_or_name: str) -> str:
    """Loads a full Mask2Former checkpoint (detectron2 .pkl or Hugging Face directory); the class head is
    re-initialised if its class count differs. A checkpoint of another architecture (backbone, queries,
    widths, layers) is refused with one sentence naming both."""
    path = resolve_weights(path_or_name)
    if is_hf_checkpoint(path):
        state, found = read_hf_checkpoint(path)
    else:
        state = read_detectron2_checkpoint(path)
        if f"{CLASS_HEAD}.weight" not in state:
            raise CheckpointError(f"{path} has no {CLASS_HEAD}.weight; it is not a Mask2Former checkpoint")
        found = infer_model_config(state, num_heads=model.num_heads)
    problem = architecture_mismatch(found, model_architecture(model), path, ignore=("num_classes",))
    if problem:
        raise CheckpointError(problem)
    checkpoint_classes = state[f"{CLASS_HEAD}.weight"].shape[0] - 1
    skip = (CLASS_HEAD,) if checkpoint_classes != model.num_classes else ()
    try:
        report = load_detectron2_state(model, state, skip_prefixes=skip, strict=True)
    except CheckpointError as e:
        raise CheckpointError(f"{path} does not fit the model (nothing was loaded): {_problems(e)}") from None
    head = f"; class head re-initialised ({checkpoint_classes} -> {model.num_classes} classes)" if skip else ""
    ignored = f"; ignored {group_names(report.ignored)}" if report.ignored else ""
    return f"fine-tuning from {path}: {len(report.loaded)} tensors{head}{ignored}"


def _problems(error: CheckpointError) -> str:
    """The report lines of a failed strict load, joined into one line."""
    lines = str(error).splitlines()[1:]
    return "; ".join(line for line in lines if not line.startswith(("loaded", "skipped", "ignored")))


def initialize_weights(model, train_config) -> str:
    """Applies `train.init_checkpoint`, else `train.backbone_weights` (empty: random init); one-line summary."""
    if train_config.init_checkpoint:
        return load_for_finetuning(model, train_config.init_checkpoint)
    if train_config.backbone_weights:
        return load_backbone(model, train_config.backbone_weights)
    return "random initialisation (train.backbone_weights and train.init_checkpoint are empty)"

"""The detectron2 name table: every tensor of the official Mask2Former, its PyTorch shape and layout, and the
Keras variables it fills, in both directions; loading a detectron2-named state into a built model.

    report = load_detectron2_state(model, state)   # state: name -> numpy array (any reader's output)
    state = to_detectron2_state(model)             # the inverse
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from model.checkpoints.errors import CheckpointError

# Tensors of official files that have no counterpart in the network: the loss's class weights, the
# (non-persistent, but present in some files) normalisation buffers, SyncBN step counters (Cityscapes
# models) and the ImageNet classifier of torchvision backbones.
IGNORED_TENSORS = re.compile(
    r"criterion\.empty_weight|pixel_mean|pixel_std|.*\.num_batches_tracked|backbone\.stem\.fc\..*"
)
# The released files store the learnable queries under their old name; the official decoder renames
# them while loading (`MultiScaleMaskedTransformerDecoder._load_from_state_dict`, version < 2).
LEGACY_NAMES = {"sem_seg_head.predictor.static_query.weight": "sem_seg_head.predictor.query_feat.weight"}
# Swin's fixed buffers (a function of the window size, recomputed by the model): never loaded.
IGNORED_SUFFIXES = (".relative_position_index", ".attn_mask")


def canonical_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames the legacy names the official loader renames (`static_query` -> `query_feat`)."""
    return {LEGACY_NAMES.get(name, name): value for name, value in state.items()}


@dataclass
class Entry:
    """One detectron2 tensor and the Keras variables it fills."""

    name: str
    shape: tuple[int, ...]  # the detectron2 (PyTorch) layout
    variables: list
    to_keras: Callable[[np.ndarray], list[np.ndarray]]
    to_torch: Callable[[list[np.ndarray]], np.ndarray]


def _conv(name, layer):
    kernel = layer.kernel
    kh, kw, cin, cout = kernel.shape
    entries = [
        Entry(
            f"{name}.weight",
            (cout, cin, kh, kw),
            [kernel],
            lambda w: [w.transpose(2, 3, 1, 0)],
            lambda vs: vs[0].transpose(3, 2, 0, 1),
        )
    ]
    if layer.use_bias:
        entries.append(Entry(f"{name}.bias", (cout,), [layer.bias], lambda b: [b], lambda vs: vs[0]))
    return entries


def _dense(name, layer):
    cin, cout = layer.kernel.shape
    entries = [Entry(f"{name}.weight", (cout, cin), [layer.kernel], lambda w: [w.T], lambda vs: vs[0].T)]
    if layer.use_bias:
        entries.append(Entry(f"{name}.bias", (cout,), [layer.bias], lambda b: [b], lambda vs: vs[0]))
    return entries


def _affine_norm(name, layer):
    """LayerNorm / GroupNorm: weight, bias."""
    (channels,) = layer.gamma.shape
    return [
        Entry(f"{name}.weight", (channels,), [layer.gamma], lambda w: [w], lambda vs: vs[0]),
        Entry(f"{name}.bias", (channels,), [layer.beta], lambda b: [b], lambda vs: vs[0]),
    ]


def _frozen_bn(name, layer):
    (channels,) = layer.gamma.shape
    pairs = (
        ("weight", layer.gamma),
        ("bias", layer.beta),
        ("running_mean", layer.moving_mean),
        ("running_var", layer.moving_variance),
    )
    return [Entry(f"{name}.{suffix}", (channels,), [v], lambda a: [a], lambda vs: vs[0]) for suffix, v in pairs]


def _param(name, variable):
    return [Entry(name, tuple(variable.shape), [variable], lambda a: [a], lambda vs: vs[0])]


def _conv_norm(name, conv_norm):
    return _conv(name, conv_norm.conv) + _frozen_bn(f"{name}.norm", conv_norm.norm)


def _torch_multihead_attention(name, attention):
    """`nn.MultiheadAttention`: in_proj rows [q; k; v], then out_proj."""
    c = attention.hidden_dim
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    return [
        Entry(
            f"{name}.in_proj_weight",
            (3 * c, c),
            [p.kernel for p in projections],
            lambda w: [w[i * c : (i + 1) * c].T for i in range(3)],
            lambda vs: np.concatenate([v.T for v in vs], axis=0),
        ),
        Entry(
            f"{name}.in_proj_bias",
            (3 * c,),
            [p.bias for p in projections],
            lambda b: [b[i * c : (i + 1) * c] for i in range(3)],
            lambda vs: np.concatenate(vs, axis=0),
        ),
    ] + _dense(f"{name}.out_proj", attention.out_proj)


def _resnet_entries(backbone) -> list[Entry]:
    """detectron2 ResNet: `backbone.stem.conv1`, `backbone.res{2..5}.{i}.conv{1,2,3}/shortcut`."""
    entries = _conv_norm("backbone.stem.conv1", backbone.stem)
    for stage_index, blocks in enumerate(backbone.stages):
        for block_index, block in enumerate(blocks):
            prefix = f"backbone.res{stage_index + 2}.{block_index}"
            for conv in ("conv1", "conv2", "conv3", "shortcut"):
                if getattr(block, conv) is not None:
                    entries += _conv_norm(f"{prefix}.{conv}", getattr(block, conv))
    return entries


def _swin_entries(backbone) -> list[Entry]:
    """Official D2SwinTransformer names (`relative_position_index` is recomputed, never loaded)."""
    entries = _conv("backbone.patch_embed.proj", backbone.patch_embed_proj)
    entries += _affine_norm("backbone.patch_embed.norm", backbone.patch_embed_norm)
    for i, blocks in enumerate(backbone.stages):
        for j, block in enumerate(blocks):
            p = f"backbone.layers.{i}.blocks.{j}"
            entries += _affine_norm(f"{p}.norm1", block.norm1)
            entries += _param(f"{p}.attn.relative_position_bias_table", block.attn.relative_position_bias_table)
            entries += _dense(f"{p}.attn.qkv", block.attn.qkv) + _dense(f"{p}.attn.proj", block.attn.proj)
            entries += _affine_norm(f"{p}.norm2", block.norm2)
            entries += _dense(f"{p}.mlp.fc1", block.fc1) + _dense(f"{p}.mlp.fc2", block.fc2)
        if i < len(backbone.downsamples):
            entries += _dense(f"backbone.layers.{i}.downsample.reduction", backbone.downsamples[i].reduction)
            entries += _affine_norm(f"backbone.layers.{i}.downsample.norm", backbone.downsamples[i].norm)
    for i, norm in enumerate(backbone.stage_norms):
        entries += _affine_norm(f"backbone.norm{i}", norm)
    return entries


def name_table(model) -> list[Entry]:
    """Every detectron2 tensor of the official Mask2Former and where it goes in `model`."""
    from model.swin import SwinTransformer

    swin = isinstance(model.backbone, SwinTransformer)
    entries = _swin_entries(model.backbone) if swin else _resnet_entries(model.backbone)

    pd = model.pixel_decoder
    prefix = "sem_seg_head.pixel_decoder"
    for i, (conv, norm) in enumerate(zip(pd.input_proj_convs, pd.input_proj_norms, strict=True)):
        entries += _conv(f"{prefix}.input_proj.{i}.0", conv) + _affine_norm(f"{prefix}.input_proj.{i}.1", norm)
    entries += _param(f"{prefix}.transformer.level_embed", pd.level_embed)
    for i, layer in enumerate(pd.encoder):
        p = f"{prefix}.transformer.encoder.layers.{i}"
        for part in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            entries += _dense(f"{p}.self_attn.{part}", getattr(layer.self_attn, part))
        entries += _dense(f"{p}.linear1", layer.linear1) + _dense(f"{p}.linear2", layer.linear2)
        entries += _affine_norm(f"{p}.norm1", layer.norm1) + _affine_norm(f"{p}.norm2", layer.norm2)
    entries += _conv(f"{prefix}.mask_features", pd.mask_features)
    entries += _conv(f"{prefix}.adapter_1", pd.adapter_1) + _affine_norm(f"{prefix}.adapter_1.norm", pd.adapter_1_norm)
    entries += _conv(f"{prefix}.layer_1", pd.layer_1) + _affine_norm(f"{prefix}.layer_1.norm", pd.layer_1_norm)

    td = model.transformer_decoder
    prefix = "sem_seg_head.predictor"
    for part in ("query_feat", "query_embed", "level_embed"):
        entries += _param(f"{prefix}.{part}.weight", getattr(td, part))
    for i, layer in enumerate(td.decoder_layers):
        p = f"{prefix}.transformer_self_attention_layers.{i}"
        entries += _torch_multihead_attention(f"{p}.self_attn", layer.self_attn) + _affine_norm(
            f"{p}.norm", layer.self_attn_norm
        )
        p = f"{prefix}.transformer_cross_attention_layers.{i}"
        entries += _torch_multihead_attention(f"{p}.multihead_attn", layer.cross_attn)
        entries += _affine_norm(f"{p}.norm", layer.cross_attn_norm)
        p = f"{prefix}.transformer_ffn_layers.{i}"
        entries += _dense(f"{p}.linear1", layer.linear1) + _dense(f"{p}.linear2", layer.linear2)
        entries += _affine_norm(f"{p}.norm", layer.ffn_norm)
    entries += _affine_norm(f"{prefix}.decoder_norm", td.decoder_norm) + _dense(f"{prefix}.class_embed", td.class_embed)
    for i, layer in enumerate(td.mask_embed):
        entries += _dense(f"{prefix}.mask_embed.layers.{i}", layer)
    return entries


def group_names(names: Iterable[str], limit: int = 6) -> str:
    """A short listing of tensor names: runs of numbered modules collapse into one line.

    ["backbone.res4.6.conv1.weight", ..., "backbone.res4.22.shortcut.weight"] -> "backbone.res4.{6..22}.* (255)".
    """
    groups: dict[str, list] = {}
    for name in names:
        parts = name.split(".")
        index = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        if index is None:
            key, number = (".".join(parts[:-1]) + ".*") if len(parts) > 1 else name, None
        else:
            key, number = ".".join(parts[:index]) + ".{}.*", int(parts[index])
        groups.setdefault(key, []).append((number, name))
    lines = []
    for key, members in groups.items():
        if len(members) <= 2:  # a group of one or two is clearer by name
            lines += [name for _, name in members]
            continue
        indices = sorted({n for n, _ in members if n is not None})
        if indices:
            span = str(indices[0]) if len(indices) == 1 else f"{{{indices[0]}..{indices[-1]}}}"
            key = key.replace("{}", span)
        lines.append(f"{key} ({len(members)})")
    more = f", and {len(lines) - limit} more groups" if len(lines) > limit else ""
    return ", ".join(lines[:limit]) + more


@dataclass
class LoadReport:
    """What a load did: tensors loaded, and those missing, unexpected, mis-shaped or skipped by request."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, expected, found)
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # IGNORED_TENSORS found in the file

    @property
    def ok(self) -> bool:
        return not (self.missing or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.skipped:
            lines.append(f"skipped on request ({len(self.skipped)}): {group_names(self.skipped)}")
        if self.missing:
            lines.append(f"missing from the checkpoint ({len(self.missing)}): {group_names(self.missing)}")
        for name, expected, found in self.mismatched[:6]:
            lines.append(f"wrong shape: {name} is {found} in the checkpoint, the model needs {expected}")
        if len(self.mismatched) > 6:
            lines.append(f"wrong shape: {len(self.mismatched) - 6} more tensors")
        if self.unexpected:
            lines.append(f"unexpected, not used ({len(self.unexpected)}): {group_names(self.unexpected)}")
        if self.ignored:
            lines.append(f"ignored, no counterpart in the network: {group_names(self.ignored)}")
        return "\n".join(lines)


def load_detectron2_state(
    model, state: dict[str, np.ndarray], *, skip_prefixes: Iterable[str] = (), strict: bool = True
) -> LoadReport:
    """Copies detectron2-named tensors into a built `Mask2Former`.

    Args:
        model: a built `Mask2Former`.
        state: name -> array, as returned by `read_detectron2_checkpoint` (legacy names are accepted).
        skip_prefixes: names starting with one of these are left at their initial values
            (e.g. `("sem_seg_head.predictor.class_embed",)` to fine-tune on other classes).
        strict: raise `CheckpointError` (and change nothing) if a tensor is missing, mis-shaped or
            unexpected (one the model has no place for, e.g. the res4.6..22 blocks of an R101 file
            loaded into an R50 model). Backbone-only checkpoints (ImageNet `R-50.pkl`) need `strict=False`
            or `skip_prefixes=("sem_seg_head",)`.
    """
    skip_prefixes = tuple(skip_prefixes)
    state = canonical_names(state)
    report, assignments = LoadReport(), []
    known = set()
    for entry in name_table(model):
        known.add(entry.name)
        if entry.name.startswith(skip_prefixes):
            report.skipped.append(entry.name)
        elif entry.name not in state:
            report.missing.append(entry.name)
        elif tuple(state[entry.name].shape) != entry.shape:
            report.mismatched.append((entry.name, entry.shape, tuple(state[entry.name].shape)))
        else:
            assignments.append((entry, state[entry.name]))
    for name in sorted(n for n in state if n not in known):
        if IGNORED_TENSORS.fullmatch(name) or name.endswith(IGNORED_SUFFIXES):
            report.ignored.append(name)
        elif not name.startswith(skip_prefixes):
            report.unexpected.append(name)
    if strict and not (report.ok and not report.unexpected):
        raise CheckpointError(f"checkpoint does not fit the model (nothing was loaded):\n{report}")
    for entry, array in assignments:
        for variable, value in zip(entry.variables, entry.to_keras(np.asarray(array)), strict=True):
            variable.assign(value.astype(variable.dtype))
        report.loaded.append(entry.name)
    return report


def to_detectron2_state(model) -> dict[str, np.ndarray]:
    """The model's weights under detectron2 names and layouts (the inverse of loading)."""
    return {e.name: e.to_torch([np.asarray(v.numpy()) for v in e.variables]) for e in name_table(model)}

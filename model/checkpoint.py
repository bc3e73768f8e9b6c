"""Official detectron2 checkpoints: safe reading, the name/layout mapping, and downloads.

    from model import build_model
    from model.checkpoint import load_detectron2_checkpoint, download
    model = build_model(config)
    report = load_detectron2_checkpoint(model, download("coco_instance_r50"))
    print(report)

A detectron2 `.pkl` is a plain pickle (`{"model": {name: numpy array}}`). A pickle can run code, so
it is read by an unpickler that accepts containers and numpy arrays only. Every name the official
loader accepts is accepted (the released files' `static_query` is `query_feat`, `LEGACY_NAMES`).

`infer_model_config` reads the whole architecture (ResNet or Swin backbone, classes, queries, widths,
layers) from a checkpoint's shapes; `architecture_mismatch` says in one sentence how it differs from a
configured model. `MODEL_ZOO` (plain data in model_zoo.py, re-exported here) names every official COCO /
ADE20K / Cityscapes checkpoint; `download` checks the md5 prefix their file names carry.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from model_zoo import MODEL_ZOO, NOT_PUBLISHED, ZOO_MODELS, describe_backbone  # noqa: F401 (re-exported)

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "mask2former_keras")

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


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says which tensors and why."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asks to import something other than containers and numpy arrays."""


# ------------------------------------------------------------------ reading
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}
# Protocol 2 writes bytes (an array's data) as `_codecs.encode(text, "latin1")`; encoding a string runs no code.
_SAFE_GLOBALS = _NUMPY_GLOBALS | {("collections", "OrderedDict"), ("_codecs", "encode")}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a detectron2 checkpoint needs; anything else raises."""

    def find_class(self, module, name):
        # numpy 1.x pickles name `numpy.core.*`; numpy 2 moved it to `numpy._core.*`.
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core.") :]
        if (module, name) not in _SAFE_GLOBALS:
            raise UnsafeCheckpointError(
                f"refusing to load: the pickle asks for `{module}.{name}`, which is neither a container nor a numpy "
                "array (a detectron2 checkpoint never does); the file is not a detectron2 checkpoint or was tampered with"
            )
        return super().find_class(module, name)


def read_detectron2_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Reads a detectron2 `.pkl` (model-zoo `model_final_*.pkl` or ImageNet `R-50.pkl`) safely.

    Returns a flat dict name -> numpy array with detectron2 model names (`backbone.res2.0.conv1.weight`, ...).
    ImageNet backbone files name tensors without the `backbone.` prefix; it is added.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; pass the .pkl file inside it")
    if not os.path.isfile(path):
        raise CheckpointError(
            f"checkpoint {path} does not exist; check the path, or pass a model-zoo name instead (it is downloaded "
            "once; `python -m tools.convert_detectron2_checkpoint --list` lists them)"
        )
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        raise CheckpointError(
            f"{path} is a Keras weights file (HDF5), not a detectron2 pickle; it needs no conversion: "
            "pass it to test.py / test_map.py as --weights with the --config it was trained with"
        )
    if data[:2] == b"PK" and path.endswith(".keras"):
        raise CheckpointError(f"{path} is a saved .keras model, not a detectron2 pickle; pass it to test.py as --model")
    if data[:2] == b"PK":
        raise CheckpointError(
            f"{path} is a PyTorch zip checkpoint (.pth), not a detectron2 pickle; use the model zoo's .pkl file"
        )
    try:
        content = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except Exception as e:  # truncated or not a pickle at all
        raise CheckpointError(
            f"{path} is not a readable detectron2 pickle ({type(e).__name__}: {e}); download it again"
        ) from None
    state = content if isinstance(content, dict) else None
    if state is not None:
        state = state.get("model", state.get("blobs", state))  # Caffe2 / Detectron1 files hold "blobs"
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} holds a {type(content).__name__}, not a dict of tensors; it is not a detectron2 checkpoint"
        )
    caffe2 = sorted(n for n in state if _CAFFE2_NAME.match(str(n)))
    if caffe2:
        raise CheckpointError(
            f"{path} holds Caffe2-named MSRA ResNet weights ({', '.join(caffe2[:2])}, ...), which expect BGR "
            "input and put the stride in the 1x1 conv; Mask2Former starts from the torchvision R-50 "
            f"(model-zoo name R-50: {MODEL_ZOO['R-50']})"
        )
    tensors = {}
    for name, value in state.items():
        if not isinstance(value, np.ndarray | np.generic):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not a numpy array")
        value = np.asarray(value)
        if name.startswith("stem.") or name.startswith("res"):
            name = "backbone." + name
        tensors[name] = value
    return canonical_names(tensors)


# Caffe2 / MSRA ResNet names: conv1_w, res_conv1_bn_s, res2_0_branch2a_w, fc1000_b ...
_CAFFE2_NAME = re.compile(r"conv1_w$|res_conv1_bn_|res\d+_\d+_branch|fc1000_")


def canonical_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames the legacy names the official loader renames (`static_query` -> `query_feat`)."""
    return {LEGACY_NAMES.get(name, name): value for name, value in state.items()}


# ------------------------------------------------------------------ mapping
@dataclass
class _Entry:
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
        _Entry(
            f"{name}.weight",
            (cout, cin, kh, kw),
            [kernel],
            lambda w: [w.transpose(2, 3, 1, 0)],
            lambda vs: vs[0].transpose(3, 2, 0, 1),
        )
    ]
    if layer.use_bias:
        entries.append(_Entry(f"{name}.bias", (cout,), [layer.bias], lambda b: [b], lambda vs: vs[0]))
    return entries


def _dense(name, layer):
    cin, cout = layer.kernel.shape
    entries = [_Entry(f"{name}.weight", (cout, cin), [layer.kernel], lambda w: [w.T], lambda vs: vs[0].T)]
    if layer.use_bias:
        entries.append(_Entry(f"{name}.bias", (cout,), [layer.bias], lambda b: [b], lambda vs: vs[0]))
    return entries


def _affine_norm(name, layer):
    """LayerNorm / GroupNorm: weight, bias."""
    (channels,) = layer.gamma.shape
    return [
        _Entry(f"{name}.weight", (channels,), [layer.gamma], lambda w: [w], lambda vs: vs[0]),
        _Entry(f"{name}.bias", (channels,), [layer.beta], lambda b: [b], lambda vs: vs[0]),
    ]


def _frozen_bn(name, layer):
    (channels,) = layer.gamma.shape
    pairs = (
        ("weight", layer.gamma),
        ("bias", layer.beta),
        ("running_mean", layer.moving_mean),
        ("running_var", layer.moving_variance),
    )
    return [_Entry(f"{name}.{suffix}", (channels,), [v], lambda a: [a], lambda vs: vs[0]) for suffix, v in pairs]


def _param(name, variable):
    return [_Entry(name, tuple(variable.shape), [variable], lambda a: [a], lambda vs: vs[0])]


def _conv_norm(name, conv_norm):
    return _conv(name, conv_norm.conv) + _frozen_bn(f"{name}.norm", conv_norm.norm)


def _torch_multihead_attention(name, attention):
    """`nn.MultiheadAttention`: in_proj rows [q; k; v], then out_proj."""
    c = attention.hidden_dim
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    return [
        _Entry(
            f"{name}.in_proj_weight",
            (3 * c, c),
            [p.kernel for p in projections],
            lambda w: [w[i * c : (i + 1) * c].T for i in range(3)],
            lambda vs: np.concatenate([v.T for v in vs], axis=0),
        ),
        _Entry(
            f"{name}.in_proj_bias",
            (3 * c,),
            [p.bias for p in projections],
            lambda b: [b[i * c : (i + 1) * c] for i in range(3)],
            lambda vs: np.concatenate(vs, axis=0),
        ),
    ] + _dense(f"{name}.out_proj", attention.out_proj)


def _resnet_entries(backbone) -> list[_Entry]:
    """detectron2 ResNet: `backbone.stem.conv1`, `backbone.res{2..5}.{i}.conv{1,2,3}/shortcut`."""
    entries = _conv_norm("backbone.stem.conv1", backbone.stem)
    for stage_index, blocks in enumerate(backbone.stages):
        for block_index, block in enumerate(blocks):
            prefix = f"backbone.res{stage_index + 2}.{block_index}"
            for conv in ("conv1", "conv2", "conv3", "shortcut"):
                if getattr(block, conv) is not None:
                    entries += _conv_norm(f"{prefix}.{conv}", getattr(block, conv))
    return entries


def _swin_entries(backbone) -> list[_Entry]:
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


def _entries(model) -> list[_Entry]:
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
    for entry in _entries(model):
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


def load_detectron2_checkpoint(model, path: str, **kwargs) -> LoadReport:
    """Reads `path` safely and loads it into `model`; see `load_detectron2_state` for the options."""
    try:
        return load_detectron2_state(model, read_detectron2_checkpoint(path), **kwargs)
    except CheckpointError as e:
        if str(e).startswith(path):
            raise
        raise CheckpointError(f"{path}: {e}") from None


def to_detectron2_state(model) -> dict[str, np.ndarray]:
    """The model's weights under detectron2 names and layouts (the inverse of loading)."""
    return {e.name: e.to_torch([np.asarray(v.numpy()) for v in e.variables]) for e in _entries(model)}


def infer_model_config(state: dict[str, np.ndarray], num_heads: int = 8) -> dict:
    """Architecture read from a checkpoint's shapes (`num_heads` cannot be read; official: 8).

    Returns a dict of `ModelConfig` fields: the backbone (`backbone` and the `backbone_*` fields of a
    ResNet, or the `swin_*` fields of a Swin: width, depths, heads and window from the relative position
    bias tables), classes, queries, widths and layer counts.
    """
    state = canonical_names(state)

    def count(prefix):
        indices = {int(n[len(prefix) :].split(".")[0]) for n in state if n.startswith(prefix)}
        return max(indices) + 1 if indices else 0

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
        "num_decoder_layers": count("sem_seg_head.predictor.transformer_ffn_layers."),
        "pixel_decoder_dim": int(state[f"{pd}.mask_features.weight"].shape[1]),
        "mask_dim": int(state[f"{pd}.mask_features.weight"].shape[0]),
        "encoder_layers": count(f"{pd}.transformer.encoder.layers."),
        "encoder_ffn_dim": int(state[f"{pd}.transformer.encoder.layers.0.linear1.weight"].shape[0]),
        "deformable_points": int(offsets.shape[0]) // (num_heads * 3 * 2),
    }


def infer_backbone_config(state: dict[str, np.ndarray]) -> dict:
    """The backbone's `ModelConfig` fields from `backbone.*` shapes: a ResNet or a Swin."""

    def count(prefix):
        indices = {int(n[len(prefix) :].split(".")[0]) for n in state if n.startswith(prefix)}
        return max(indices) + 1 if indices else 0

    if "backbone.stem.conv1.weight" in state:
        return {
            "backbone": "resnet",
            "backbone_stage_blocks": tuple(count(f"backbone.res{i}.") for i in range(2, 6)),
            "backbone_stem_channels": int(state["backbone.stem.conv1.weight"].shape[0]),
            "backbone_res2_channels": int(state["backbone.res2.0.conv3.weight"].shape[0]),
        }
    if "backbone.patch_embed.proj.weight" in state:
        tables = [state[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(4)]
        return {
            "backbone": "swin",
            "swin_embed_dim": int(state["backbone.patch_embed.proj.weight"].shape[0]),
            "swin_depths": tuple(count(f"backbone.layers.{i}.blocks.") for i in range(4)),
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
    shapes = {entry.name: SimpleNamespace(shape=entry.shape) for entry in _entries(model)}
    return infer_model_config(shapes, num_heads=model.num_heads)


def architecture_mismatch(found: dict, model_config, source: str, ignore: Iterable[str] = ()) -> str | None:
    """One sentence saying how checkpoint `source` (fields `found`, from `infer_model_config`) differs from
    `model_config` (a `ModelConfig`, or a dict such as `model_architecture` returns) and the flags that fix
    it; None when it fits. Fields in `ignore` are not compared."""
    if isinstance(model_config, dict):
        model_config = SimpleNamespace(**model_config)
    found = {k: v for k, v in found.items() if k not in set(ignore)}
    # deformable_points is read from sampling_offsets assuming model_config.num_heads: compare the product
    found_points = found.pop("deformable_points", model_config.deformable_points) * model_config.num_heads
    differ = {k: v for k, v in found.items() if _as_tuple(getattr(model_config, k, None)) != _as_tuple(v)}
    have = [f"{k}={_as_flag(v)}" for k, v in differ.items()]
    want = [_as_flag(getattr(model_config, k, None)) for k in differ]
    fix = [f"model.{k}={_as_flag(v)}" for k, v in differ.items()]
    if found_points != model_config.num_heads * model_config.deformable_points:
        have.append(f"num_heads x deformable_points={found_points}")
        want.append(str(model_config.num_heads * model_config.deformable_points))
        fix.append("model.num_heads / model.deformable_points to match")
    if not have:
        return None
    backbone = ""
    backbone_keys = {"backbone"} | {k for keys in BACKBONE_FIELDS.values() for k in keys}
    if backbone_keys & set(differ):
        backbone = (
            f" (the checkpoint is {describe_backbone(found)}, the configured model {describe_backbone(model_config)})"
        )
    presets = _matching_presets(found)
    hint = f"use --preset {' or '.join(presets[:2])}, or " if presets else ""
    return (
        f"checkpoint {source} has {', '.join(have)} but the config says {', '.join(want)}{backbone}; "
        f"{hint}pass --set {' '.join(fix)}"
    )


def _matching_presets(found: dict) -> list[str]:
    """Names of the presets whose model has every field of `found` (the zoo names first)."""
    from config import PRESETS

    matches = []
    for name, make in PRESETS.items():
        model_config = make().model
        if all(_as_tuple(getattr(model_config, k, None)) == _as_tuple(v) for k, v in found.items()):
            matches.append(name)
    return sorted(matches, key=lambda n: n not in ZOO_MODELS)


def _as_tuple(value):
    return tuple(value) if isinstance(value, list | tuple) else value


def _as_flag(value) -> str:
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, tuple | list) else str(value)


# ------------------------------------------------------------------ download
def digests_of(path: str) -> tuple[str, str]:
    """(md5, sha256) hex digests of a file, read once."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def md5_prefix_of_name(url_or_path: str) -> str | None:
    """The md5 prefix a model-zoo file name carries (`model_final_3c8ec9.pkl` -> "3c8ec9"), or None."""
    match = re.search(r"_([0-9a-f]{6})\.pkl$", url_or_path)
    return match[1] if match else None


def download(name_or_url: str, cache_dir: str = DEFAULT_CACHE_DIR, sha256: str | None = None) -> str:
    """Returns a local path to a model-zoo file, downloading it once into `cache_dir`.

    Args:
        name_or_url: a key of `MODEL_ZOO`, or a URL (http, https or file).
        sha256: expected hex digest. Without it, the digest of the first download is recorded beside the
            file (`<file>.sha256`) and every later use is checked against it, so a corrupted or
            truncated cache entry is caught rather than loaded.

    A file name that ends in `_<6 hex digits>.pkl` (every model-zoo file) carries the start of the
    file's md5: it is checked after the download and for cached files. The file is written to a
    temporary name and moved into place only when complete and verified.
    """
    if name_or_url in NOT_PUBLISHED:
        raise CheckpointError(f"{name_or_url}: {NOT_PUBLISHED[name_or_url]}")
    url = MODEL_ZOO.get(name_or_url, name_or_url)
    if "://" not in url:
        raise ValueError(f"{name_or_url!r} is neither a model-zoo name ({', '.join(MODEL_ZOO)}) nor a URL")
    path = os.path.join(cache_dir, *url.split("://", 1)[1].split("/")[-2:])
    record, md5_prefix = path + ".sha256", md5_prefix_of_name(url)
    if os.path.isfile(path):
        expected = sha256 or (open(record).read().strip() if os.path.isfile(record) else None)
        md5, actual = digests_of(path)
        if md5_prefix is not None and not md5.startswith(md5_prefix):
            raise CheckpointError(
                f"cached {path} has md5 {md5}, but its name says it starts with {md5_prefix}; the file is "
                "damaged or truncated: delete it and download again"
            )
        if expected is None or actual == expected:
            return path
        raise CheckpointError(f"cached {path} has sha256 {actual}, expected {expected}; delete it and download again")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        md5, actual = digests_of(tmp)
        if md5_prefix is not None and not md5.startswith(md5_prefix):
            raise CheckpointError(
                f"download of {url} has md5 {md5}, but the file name says it starts with {md5_prefix}; "
                "the download is damaged or truncated: try again"
            )
        if sha256 is not None and actual != sha256:
            raise CheckpointError(f"download of {url} has sha256 {actual}, expected {sha256}; try again")
        os.replace(tmp, path)
    except OSError as e:
        raise CheckpointError(f"cannot download {url} ({e}); download it by hand and pass the local path") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with open(record, "w") as f:
        f.write(actual + "\n")
    return path

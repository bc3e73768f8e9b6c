"""Official detectron2 checkpoints: safe reading, the name/layout mapping, and downloads.

    from model import build_model
    from model.checkpoint import load_detectron2_checkpoint, download
    model = build_model(config)
    report = load_detectron2_checkpoint(model, download("coco_instance_r50"))
    print(report)

A detectron2 `.pkl` is a plain pickle (`{"model": {name: numpy array}}`). A pickle can run code, so
it is read by an unpickler that accepts containers and numpy arrays only.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

MODEL_ZOO = {
    # ImageNet backbones (torchvision weights converted by detectron2; RGB input, stride in the 3x3).
    "R-50": "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/torchvision/R-50.pkl",
    "R-101": "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/torchvision/R-101.pkl",
    # Mask2Former model zoo (facebookresearch/Mask2Former MODEL_ZOO.md).
    "coco_instance_r50": "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/instance/maskformer2_R50_bs16_50ep/model_final_3c8ec9.pkl",
    "coco_instance_r101": "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/instance/maskformer2_R101_bs16_50ep/model_final_eba159.pkl",
    "coco_panoptic_r50": "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_R50_bs16_50ep/model_final_94dc52.pkl",
    "ade20k_semantic_r50": "https://dl.fbaipublicfiles.com/maskformer/mask2former/ade20k/semantic/maskformer2_R50_bs16_160k/model_final_500878.pkl",
}

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "mask2former_keras")

# Tensors of official checkpoints that have no counterpart in the network.
IGNORED_TENSORS = ("criterion.empty_weight", "pixel_mean", "pixel_std")


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
            f"checkpoint {path} does not exist; check the path or fetch it with model.checkpoint.download"
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
    state = content.get("model", content) if isinstance(content, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} holds a {type(content).__name__}, not a dict of tensors; it is not a detectron2 checkpoint"
        )
    tensors = {}
    for name, value in state.items():
        if not isinstance(value, np.ndarray | np.generic):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not a numpy array")
        value = np.asarray(value)
        if name.startswith("stem.") or name.startswith("res"):
            name = "backbone." + name
        tensors[name] = value
    return tensors


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
    return [
        _Entry(f"{name}.weight", (cout, cin), [layer.kernel], lambda w: [w.T], lambda vs: vs[0].T),
        _Entry(f"{name}.bias", (cout,), [layer.bias], lambda b: [b], lambda vs: vs[0]),
    ]


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


def _entries(model) -> list[_Entry]:
    """Every detectron2 tensor of the official Mask2Former and where it goes in `model`."""
    entries = _conv_norm("backbone.stem.conv1", model.backbone.stem)
    for stage_index, blocks in enumerate(model.backbone.stages):
        for block_index, block in enumerate(blocks):
            prefix = f"backbone.res{stage_index + 2}.{block_index}"
            for conv in ("conv1", "conv2", "conv3", "shortcut"):
                if getattr(block, conv) is not None:
                    entries += _conv_norm(f"{prefix}.{conv}", getattr(block, conv))

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


@dataclass
class LoadReport:
    """What a load did: tensors loaded, and those missing, unexpected, mis-shaped or skipped by request."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, expected, found)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.skipped:
            lines.append(f"skipped on request ({len(self.skipped)}): {', '.join(self.skipped)}")
        if self.missing:
            lines.append(f"missing from the checkpoint ({len(self.missing)}): {', '.join(self.missing)}")
        for name, expected, found in self.mismatched:
            lines.append(f"wrong shape: {name} is {found} in the checkpoint, the model needs {expected}")
        if self.unexpected:
            lines.append(f"unexpected, not used ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        return "\n".join(lines)


def load_detectron2_state(
    model, state: dict[str, np.ndarray], *, skip_prefixes: Iterable[str] = (), strict: bool = True
) -> LoadReport:
    """Copies detectron2-named tensors into a built `Mask2Former`.

    Args:
        model: a built `Mask2Former`.
        state: name -> array, as returned by `read_detectron2_checkpoint`.
        skip_prefixes: names starting with one of these are left at their initial values
            (e.g. `("sem_seg_head.predictor.class_embed",)` to fine-tune on other classes).
        strict: raise `CheckpointError` (and change nothing) if a tensor is missing or mis-shaped.
            Backbone-only checkpoints (ImageNet `R-50.pkl`) need `strict=False`.
    """
    skip_prefixes = tuple(skip_prefixes)
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
    report.unexpected = sorted(n for n in state if n not in known and n not in IGNORED_TENSORS)
    if strict and not report.ok:
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
    """Architecture sizes read from a checkpoint's shapes (`num_heads` cannot be read; official: 8).

    Returns a dict of `ModelConfig` fields.
    """

    def count(prefix):
        indices = {int(n[len(prefix) :].split(".")[0]) for n in state if n.startswith(prefix)}
        return max(indices) + 1 if indices else 0

    required = (
        "sem_seg_head.predictor.class_embed.weight",
        "sem_seg_head.predictor.query_feat.weight",
        "backbone.stem.conv1.weight",
    )
    for name in required:
        if name not in state:
            raise CheckpointError(f"tensor {name} is missing; this is not a full Mask2Former checkpoint")
    class_weight = state["sem_seg_head.predictor.class_embed.weight"]
    query_feat = state["sem_seg_head.predictor.query_feat.weight"]
    pd = "sem_seg_head.pixel_decoder"
    offsets = state[f"{pd}.transformer.encoder.layers.0.self_attn.sampling_offsets.weight"]
    return {
        "num_classes": int(class_weight.shape[0]) - 1,
        "num_queries": int(query_feat.shape[0]),
        "hidden_dim": int(query_feat.shape[1]),
        "num_heads": num_heads,
        "backbone_stage_blocks": tuple(count(f"backbone.res{i}.") for i in range(2, 6)),
        "backbone_stem_channels": int(state["backbone.stem.conv1.weight"].shape[0]),
        "backbone_res2_channels": int(state["backbone.res2.0.conv3.weight"].shape[0]),
        "decoder_ffn_dim": int(state["sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight"].shape[0]),
        "num_decoder_layers": count("sem_seg_head.predictor.transformer_ffn_layers."),
        "pixel_decoder_dim": int(state[f"{pd}.mask_features.weight"].shape[1]),
        "mask_dim": int(state[f"{pd}.mask_features.weight"].shape[0]),
        "encoder_layers": count(f"{pd}.transformer.encoder.layers."),
        "encoder_ffn_dim": int(state[f"{pd}.transformer.encoder.layers.0.linear1.weight"].shape[0]),
        "deformable_points": int(offsets.shape[0]) // (num_heads * 3 * 2),
    }


# ------------------------------------------------------------------ download
def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(name_or_url: str, cache_dir: str = DEFAULT_CACHE_DIR, sha256: str | None = None) -> str:
    """Returns a local path to a model-zoo file, downloading it once into `cache_dir`.

    Args:
        name_or_url: a key of `MODEL_ZOO`, or a URL (http, https or file).
        sha256: expected hex digest. Without it, the digest of the first download is recorded beside the
            file (`<file>.sha256`) and every later use is checked against it, so a corrupted or
            truncated cache entry is caught rather than loaded.

    The file is written to a temporary name and moved into place only when complete and verified.
    """
    url = MODEL_ZOO.get(name_or_url, name_or_url)
    if "://" not in url:
        raise ValueError(f"{name_or_url!r} is neither a model-zoo name ({', '.join(MODEL_ZOO)}) nor a URL")
    path = os.path.join(cache_dir, *url.split("://", 1)[1].split("/")[-2:])
    record = path + ".sha256"
    if os.path.isfile(path):
        expected = sha256 or (open(record).read().strip() if os.path.isfile(record) else None)
        actual = sha256_of(path)
        if expected is None or actual == expected:
            return path
        raise CheckpointError(f"cached {path} has sha256 {actual}, expected {expected}; delete it and download again")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        actual = sha256_of(tmp)
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

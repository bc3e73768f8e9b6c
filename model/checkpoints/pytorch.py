"""PyTorch checkpoints read without torch and without running code.

Reads the ImageNet Swin weights the official configs start from: Microsoft's
`swin_*_patch4_window*_*.pth` and the pickle of torch tensors that the official
`tools/convert-pretrained-swin-model-to-d2.py` makes of it:

    state = read_torch_checkpoint("swin_tiny_patch4_window7_224.pth")   # name -> numpy array
    report = load_imagenet_backbone(model, "swin_tiny_patch4_window7_224.pkl")

Three layouts hold torch tensors, each a pickle that rebuilds a tensor with
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`:
  - zip (`torch.save`, torch >= 1.6): `<archive>/data.pkl`; each storage is a persistent id
    `("storage", torch.FloatStorage, key, location, numel)` whose raw bytes are `<archive>/data/<key>`
    (byte order in `<archive>/byteorder`, little-endian when absent);
  - legacy (`_use_new_zipfile_serialization=False`): pickles of a magic number, the protocol version
    and system info, then the object (same persistent ids), the sorted storage keys, and per storage
    an int64 element count followed by its raw bytes;
  - a plain `pickle.dump` of tensors (the d2 converter): each storage pickles as
    `torch.storage._load_from_bytes(<a legacy file holding that storage>)`.
The unpickler maps exactly these torch names to numpy-building functions and otherwise allows only
what a detectron2 pickle may hold (containers, numpy arrays); anything else raises
`UnsafeCheckpointError`. Tensor views are bounds-checked against their storage.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from model.checkpoints.detectron2 import RestrictedUnpickler
from model.checkpoints.errors import CheckpointError, UnsafeCheckpointError
from model.checkpoints.names import IGNORED_SUFFIXES, LoadReport, load_detectron2_state, name_table

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage classes -> numpy dtype (bfloat16 is read as its 16 high bits of a float32).
_STORAGE_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "u2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


@dataclass(frozen=True)
class _StorageType:
    name: str  # e.g. "FloatStorage"

    def to_numpy(self, raw: bytes, numel: int, byteorder: str) -> np.ndarray:
        dtype = np.dtype(_STORAGE_DTYPES[self.name]).newbyteorder("<" if byteorder == "little" else ">")
        if len(raw) < numel * dtype.itemsize:
            raise CheckpointError(f"a {self.name} holds {len(raw)} bytes, fewer than its {numel} elements need")
        array = np.frombuffer(raw, dtype=dtype, count=numel)
        if self.name == "BFloat16Storage":
            return (array.astype("<u4") << 16).view("<f4")
        return array.astype(dtype.newbyteorder("="))


@dataclass(frozen=True)
class _StorageRef:
    key: str


@dataclass(frozen=True)
class _PendingTensor:
    """A tensor whose storage may be read only after the pickle (legacy files)."""

    storage: object  # _StorageRef or np.ndarray
    offset: int
    size: tuple
    stride: tuple

    def to_numpy(self, storages: dict[str, np.ndarray]) -> np.ndarray:
        storage = storages[self.storage.key] if isinstance(self.storage, _StorageRef) else self.storage
        size, stride = tuple(int(n) for n in self.size), tuple(int(s) for s in self.stride)
        if len(size) != len(stride) or min((*size, *stride, self.offset), default=0) < 0:
            raise CheckpointError(f"tensor of size {size} has a malformed layout (stride {stride})")
        if 0 in size:
            return np.zeros(size, storage.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= len(storage):
            raise CheckpointError(f"tensor of size {size} reaches past its storage of {len(storage)} elements")
        view = np.lib.stride_tricks.as_strided(
            storage[self.offset :], shape=size, strides=[s * storage.itemsize for s in stride], writeable=False
        )
        return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _TorchUnpickler(RestrictedUnpickler):
    """The detectron2 unpickler plus the few torch names that rebuild tensors (as numpy)."""

    def __init__(self, file, storage_types: dict):
        super().__init__(file, encoding="latin1")
        self.storage_types = storage_types  # key -> (_StorageType, numel), filled by persistent ids

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        torch_functions = {
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch.storage", "_load_from_bytes"): _load_from_bytes,
        }
        if (module, name) in torch_functions:
            return torch_functions[(module, name)]
        return super().find_class(module, name)

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) >= 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
        ):
            raise UnsafeCheckpointError(f"refusing to load: unknown persistent id {pid!r} (not a torch storage)")
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError("storage views of pre-1.0 torch files are not supported; re-save the file")
        self.storage_types[pid[2]] = (pid[1], pid[4])
        return _StorageRef(pid[2])


def _materialize(obj, storages):
    """Replaces every pending tensor inside dicts / lists / tuples by its numpy array."""
    if isinstance(obj, _PendingTensor):
        return obj.to_numpy(storages)
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v, storages)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v, storages) for v in obj)
    if isinstance(obj, _StorageRef):
        return storages[obj.key]
    return obj


def _read_legacy(f, storage_types) -> object:
    """The rest of a legacy file after its magic number (read by the caller)."""
    if _TorchUnpickler(f, storage_types).load() != _LEGACY_PROTOCOL:
        raise CheckpointError("unsupported legacy torch file protocol")
    sys_info = _TorchUnpickler(f, storage_types).load()
    byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
    obj = _TorchUnpickler(f, storage_types).load()
    keys = _TorchUnpickler(f, storage_types).load()
    storages = {}
    for key in keys:
        storage_type, _ = storage_types[key]
        numel = int(np.frombuffer(f.read(8), "<i8")[0])
        itemsize = np.dtype(_STORAGE_DTYPES[storage_type.name]).itemsize
        storages[key] = storage_type.to_numpy(f.read(numel * itemsize), numel, byteorder)
    return _materialize(obj, storages)


def _load_from_bytes(data):
    """`torch.storage._load_from_bytes`: a legacy torch file holding one storage -> numpy array."""
    f = io.BytesIO(data)
    if _TorchUnpickler(f, {}).load() != _LEGACY_MAGIC:
        raise CheckpointError("a pickled torch storage is not in torch's legacy format")
    storage = _read_legacy(f, {})
    if not isinstance(storage, np.ndarray):
        raise CheckpointError("a pickled torch storage holds something other than a storage")
    return storage


def _read_zip(path) -> object:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data_pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not data_pkl:
            raise CheckpointError(f"{path} is a zip without data.pkl; it is not a torch checkpoint")
        prefix = data_pkl[0][: -len("data.pkl")]
        byteorder = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        storage_types = {}
        obj = _TorchUnpickler(io.BytesIO(archive.read(data_pkl[0])), storage_types).load()
        storages = {}
        for key, (storage_type, numel) in storage_types.items():
            if f"{prefix}data/{key}" not in names:
                raise CheckpointError(f"{path} lacks the storage data/{key}; the file is truncated")
            storages[key] = storage_type.to_numpy(archive.read(f"{prefix}data/{key}"), numel, byteorder)
    return _materialize(obj, storages)


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Reads a `.pth` (zip or legacy) or a pickle of torch tensors / numpy arrays; no torch, no code run.

    Returns the flat state dict (the checkpoint's "model" or "state_dict" entry if it has one) as
    name -> numpy array, names unchanged.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        if zipfile.is_zipfile(path):
            content = _read_zip(path)
        else:
            with open(path, "rb") as f:
                first = _materialize(_TorchUnpickler(f, {}).load(), {})
                content = _read_legacy(f, {}) if first == _LEGACY_MAGIC else first
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # truncated, or not a pickle at all
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({type(e).__name__}: {e}); download it again"
        ) from None
    if isinstance(content, dict):
        content = next((content[k] for k in ("model", "state_dict") if isinstance(content.get(k), dict)), content)
    if not isinstance(content, dict):
        raise CheckpointError(f"{path} holds a {type(content).__name__}, not a dict of tensors")
    state = OrderedDict()
    for name, value in content.items():
        if not isinstance(value, np.ndarray | np.generic):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        state[name] = np.asarray(value)
    return state


# ImageNet backbone files name tensors without `backbone.`; these prefixes are the backbone's own.
_BACKBONE_PREFIXES = ("stem.", "res2.", "res3.", "res4.", "res5.", "patch_embed.", "layers.")


def imagenet_backbone_state(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """ImageNet weights (Microsoft Swin or detectron2 ResNet names) -> (`backbone.`-named tensors, dropped names).

    Dropped: the classifier (`head.*`, `stem.fc.*`), Swin's final `norm.*` (the detection backbone has
    `norm0..3` instead, which keep their initial values, as in the official loader) and fixed buffers
    (`attn_mask`, `relative_position_index`).
    """
    kept, dropped = {}, []
    for name, value in state.items():
        name = name[len("backbone.") :] if name.startswith("backbone.") else name
        if name.startswith(_BACKBONE_PREFIXES) and not name.endswith(IGNORED_SUFFIXES) and ".fc." not in name:
            kept[f"backbone.{name}"] = value
        else:
            dropped.append(name)
    return kept, dropped


def load_imagenet_backbone(model, path: str) -> LoadReport:
    """Loads ImageNet backbone weights (`.pth`, d2 pickle of torch tensors, or detectron2 `.pkl`) into
    `model.backbone`; raises `CheckpointError` (loading nothing) if a backbone tensor is missing or
    mis-shaped or the file has backbone tensors the model lacks, except Swin's `backbone.norm{i}`, which
    ImageNet files do not have (they keep their initial ones / zeros, as officially).

    The report lists the file's classifier, final norm and buffers as unexpected (not used).
    """
    state, dropped = imagenet_backbone_state(read_torch_checkpoint(path))
    needed = {e.name: e.shape for e in name_table(model) if e.name.startswith("backbone.")}
    missing = [n for n in needed if n not in state and not re.fullmatch(r"backbone\.norm\d", n.rsplit(".", 1)[0])]
    mismatched = [
        f"{n} is {state[n].shape}, the model needs {s}" for n, s in needed.items() if n in state and state[n].shape != s
    ]
    unexpected = [n for n in state if n not in needed]
    if missing or mismatched or unexpected:
        problems = [
            f"missing {', '.join(missing[:8])}" if missing else "",
            "; ".join(mismatched[:8]),
            f"unexpected {', '.join(unexpected[:8])}" if unexpected else "",
        ]
        raise CheckpointError(
            f"{path} does not fit the model's {type(model.backbone).__name__} backbone, nothing was loaded: "
            + "; ".join(p for p in problems if p)
        )
    report = load_detectron2_state(model, state, strict=False)
    report.missing = [n for n in report.missing if n.startswith("backbone.")]
    report.unexpected = dropped
    return report

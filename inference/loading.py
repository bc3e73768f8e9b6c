"""The model for inference and evaluation: a saved `.keras` model, or the configured model plus weights.

    network = load_model(config, model_path="mask2former_r50_coco.keras")   # architecture from the file
    network = load_model(config, weights_path="model_final_3c8ec9.pkl")       # official detectron2 checkpoint
    network = load_model(config, weights_path="coco_instance_r50")            # model-zoo name: downloaded once
    network = load_model(config, weights_path="hf_model_dir")                 # Hugging Face save_pretrained
    network = load_model(config, weights_path="runs/m/ckpt.weights.h5")       # Keras weights of this model

A `.keras` file describes its own architecture: `config.model` is updated to it (so that the class
count checks against `categories.json` use the model's). A `.keras` written by `save_model` (train.py,
tools/convert_detectron2_checkpoint.py) also carries its inference settings (test-time resize, task,
thresholds, class names) in a small JSON entry of its zip archive; `model_settings(path)` reads them
without TensorFlow, and the scripts apply them before `--config` / `--set` / flags, so `--model m.keras`
predicts as `--config` + `--weights` of the same model do. Weights must fit the configured model; a
checkpoint of another architecture (e.g. 133 classes against the 80 of `--preset coco_instance`, or an
R101 against the R50 it configures) is refused with one sentence naming both architectures and the
preset or flags that fix it, before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile

from config import ModelConfig

SETTINGS_ENTRY = "mask2former_inference.json"  # inside the .keras zip, beside Keras' own entries
SETTINGS_FIELDS = ("data.min_size_test", "data.max_size_test") + tuple(
    f"inference.{name}"
    for name in ("task", "object_mask_threshold", "overlap_threshold", "instances_per_image", "score_threshold")
)

WEIGHT_SUFFIXES = (".pkl", ".weights.h5", ".keras")


class ModelLoadError(ValueError):
    """The model or weights file is missing, of an unknown kind, or does not fit the configuration."""


def load_model(config, model_path: str | None = None, weights_path: str | None = None):
    """A ready Keras `Mask2Former` from exactly one of `model_path` (.keras) and `weights_path`."""
    if (model_path is None) == (weights_path is None):
        raise ModelLoadError("give exactly one of a .keras model file (--model) and a weights file (--weights)")
    path = model_path or weights_path
    if weights_path is not None:
        path = weights_path = _resolve_zoo_name(weights_path)
        if _is_hf_checkpoint(path):
            return _load_weights(path, config)
    _check_path(path, "--model" if model_path else "--weights")
    if model_path is not None:
        return _load_keras_model(model_path, config)
    return _load_weights(weights_path, config)


def inference_settings(config, categories=None) -> dict:
    """What a model file carries besides its architecture: {"config": {dotted field: value}, "categories": ...}."""
    values = {}
    for key in SETTINGS_FIELDS:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        values[key] = list(value) if isinstance(value, tuple) else value
    return {"config": values, "categories": categories.to_json()["categories"] if categories is not None else None}


def save_model(network, path: str, config, categories=None) -> None:
    """Saves `network` as a `.keras` file carrying `inference_settings(config, categories)`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.keras"
    network.save(tmp)
    with zipfile.ZipFile(tmp, "a") as archive:
        archive.writestr(SETTINGS_ENTRY, json.dumps(inference_settings(config, categories), indent=1))
    os.replace(tmp, path)


def model_settings(path: str) -> dict:
    """The inference settings saved in a `.keras` file ({} for a file written by plain `model.save`).

    Raises ModelLoadError when the file is missing, a folder, or not a complete .keras (zip) archive."""
    _check_path(path, "--model")
    if not path.endswith(".keras"):
        return {}
    try:
        with zipfile.ZipFile(path) as archive:
            if SETTINGS_ENTRY not in archive.namelist():
                return {}
            return json.loads(archive.read(SETTINGS_ENTRY))
    except (zipfile.BadZipFile, EOFError, json.JSONDecodeError, OSError) as e:
        raise ModelLoadError(
            f"{path} is not a complete .keras file ({type(e).__name__}: {_first_line(e)}); it may be truncated: "
            "copy or convert it again"
        ) from None


def settings_overrides(settings: dict) -> dict:
    """{dotted config field: value} of saved settings, for `cli.config_from_args(..., defaults=...)`."""
    return {k: v for k, v in (settings.get("config") or {}).items() if k in SETTINGS_FIELDS}


def settings_categories(settings: dict):
    """The class names saved with a model as `Categories`, or None."""
    from data.categories import Categories

    entries = settings.get("categories")
    return Categories.from_coco(entries) if entries else None


def _check_path(path: str, flag: str) -> None:
    if os.path.isdir(path):
        raise ModelLoadError(f"{flag} {path} is a folder, not a file; pass the model or weights file inside it")
    if not os.path.isfile(path):
        raise ModelLoadError(
            f"{path} does not exist; check the path (converted models come from "
            "`python -m tools.convert_detectron2_checkpoint`, official weights from the model zoo)"
        )


def _load_keras_model(path: str, config):
    import keras

    import model as model_package  # registers the layers with Keras

    if not path.endswith(".keras"):
        hint = "pass it with --weights" if path.endswith(WEIGHT_SUFFIXES) else "convert it to .keras first"
        raise ModelLoadError(f"{path} is not a saved .keras model; {hint}")
    model_settings(path)  # a damaged zip is named as such, not as Keras' misleading "file not found"
    try:
        network = keras.saving.load_model(path)
    except Exception as e:  # noqa: BLE001 - Keras raises many kinds for a damaged or foreign file
        raise ModelLoadError(
            f"{path} cannot be loaded as a Keras model ({type(e).__name__}: {_first_line(e)}); "
            "convert the checkpoint again"
        ) from None
    if not isinstance(network, model_package.Mask2Former):
        raise ModelLoadError(f"{path} holds a {type(network).__name__}, not a Mask2Former model")
    from model.checkpoints import model_architecture

    # Plain fields from the saved constructor arguments; the backbone (a serialised object there) and
    # the other shape-given fields from the network's own tensors.
    saved = network.get_config()
    names = {field.name for field in dataclasses.fields(ModelConfig)}
    fields = {k: v for k, v in saved.items() if k in names and not isinstance(v, dict)}
    fields.update(model_architecture(network))
    for name, value in fields.items():
        config.set(f"model.{name}", value)
    config.validate()
    return network


def _resolve_zoo_name(path: str) -> str:
    """A model-zoo name (`coco_instance_r50`) that is not a local file becomes the downloaded file."""
    from model.checkpoints import CheckpointError, download
    from model_zoo import MODEL_ZOO

    if os.path.exists(path) or path not in MODEL_ZOO:
        return path
    try:
        return download(path)
    except CheckpointError as e:
        raise ModelLoadError(_first_line(e)) from None


def _is_hf_checkpoint(path: str) -> bool:
    from model.checkpoints import is_hf_checkpoint

    return is_hf_checkpoint(path)


def _load_weights(path: str, config):
    from model import build_model

    if path.endswith(".pkl") or _is_hf_checkpoint(path):
        state = _read_official(path, config)
        network = build_model(config)
        from model.checkpoints import CheckpointError, load_detectron2_state

        try:
            load_detectron2_state(network, state)
        except CheckpointError as e:
            problems = [line for line in str(e).splitlines() if line.startswith(("missing", "wrong shape", "unexp"))]
            raise ModelLoadError(f"{path} does not fit the configured model: {(problems or [str(e)])[0]}") from None
        return network
    if not path.endswith((".weights.h5", ".keras")):
        raise ModelLoadError(
            f"{path} is neither a detectron2 .pkl nor a Keras .weights.h5 / .keras file; pass one of those"
        )
    if path.endswith(".weights.h5"):
        _check_keras_class_count(path, config)
    network = build_model(config)
    try:
        network.load_weights(path)
    except Exception as e:  # noqa: BLE001 - h5py and Keras raise OSError, ValueError, KeyError...
        raise ModelLoadError(
            f"{path} cannot be loaded into the configured model ({type(e).__name__}: "
            f"{_first_line(e)}); use the config it was trained with (--config)"
        ) from None
    return network


def _read_official(path: str, config) -> dict:
    """The detectron2-named state of a .pkl or Hugging Face directory, after checking that its architecture
    (read from the shapes, or config.json) is the configured one."""
    from cli import architecture_mismatch
    from model.checkpoints import CheckpointError, infer_model_config, read_detectron2_checkpoint, read_hf_checkpoint

    try:
        if _is_hf_checkpoint(path):
            state, found = read_hf_checkpoint(path)
        else:
            state = read_detectron2_checkpoint(path)
            found = infer_model_config(state, num_heads=config.model.num_heads)
    except CheckpointError as e:
        raise ModelLoadError(_first_line(e) if str(e).startswith(path) else f"{path}: {_first_line(e)}") from None
    problem = architecture_mismatch(found, config.model, path)
    if problem:
        raise ModelLoadError(problem)
    return state


def _check_keras_class_count(path: str, config) -> None:
    """Reads the class head's bias shape from a Keras weights file; refuses a different class count."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            shapes = []
            f.visititems(lambda name, item: shapes.append(item.shape) if name.endswith("class_embed/vars/1") else None)
    except OSError as e:
        raise ModelLoadError(f"{path} is not a readable Keras weights file ({_first_line(e)})") from None
    if shapes and shapes[0][0] - 1 != config.model.num_classes:
        beside = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
        where = f"--config {beside}" if os.path.isfile(beside) else "--config RUN/config.json of its training run"
        raise ModelLoadError(
            f"weights {path} predict {shapes[0][0] - 1} classes but model.num_classes is "
            f"{config.model.num_classes}: they belong to another model; pass the config it was trained with ({where})"
        )


def _first_line(error: Exception) -> str:
    text = str(error.args[0]) if error.args else str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__

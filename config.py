"""One configuration for everything: model, loss, data, training and inference.

`Mask2FormerConfig()` is the official R50 COCO-instance recipe (Cheng et al., 2022, and the
official `maskformer2_R50_bs16_50ep.yaml`). Presets change only what their task changes:

    from config import Mask2FormerConfig
    cfg = Mask2FormerConfig.preset("coco_panoptic")
    cfg.train.batch_size = 8
    cfg.validate()
    cfg.save("run/config.json")

Every script accepts the same overrides on its command line (`cli.add_config_arguments`):

    python train.py --preset coco_panoptic --config my.json --set train.batch_size=8 model.num_queries=200
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any

from jsonfile import read_json, write_json
from model_zoo import ZOO_MODELS


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the fix."""


@dataclass
class ModelConfig:
    """Architecture. Defaults: ResNet-50 Mask2Former with 100 queries (44.0M parameters)."""

    num_classes: int = 80  # K; the class head predicts K + 1 (the last is "no object")
    num_queries: int = 100
    backbone: str = "resnet"  # "resnet" (backbone_* fields) or "swin" (swin_* fields)
    backbone_stage_blocks: tuple[int, ...] = (3, 4, 6, 3)  # R50; R101 is (3, 4, 23, 3)
    backbone_stem_channels: int = 64
    backbone_res2_channels: int = 256  # doubles per stage; bottleneck width is a quarter
    swin_embed_dim: int = 96  # Swin res2 channels, doubling per stage (T/S 96, B 128, L 192)
    swin_depths: tuple[int, ...] = (2, 2, 6, 2)  # blocks per stage (T; S/B/L: 2, 2, 18, 2)
    swin_num_heads: tuple[int, ...] = (3, 6, 12, 24)  # T/S; B (4, 8, 16, 32); L (6, 12, 24, 48)
    swin_window_size: int = 7  # 7 for ImageNet-224 weights, 12 for 384
    swin_drop_path_rate: float = 0.3  # stochastic depth at training only (official 0.3)
    hidden_dim: int = 256  # transformer decoder width
    num_heads: int = 8  # decoder and pixel-decoder attention heads
    decoder_ffn_dim: int = 2048
    num_decoder_layers: int = 9  # gives 10 prediction sets (the official yaml's DEC_LAYERS: 10)
    pixel_decoder_dim: int = 256  # conv_dim of the pixel decoder
    mask_dim: int = 256
    encoder_layers: int = 6  # deformable-attention encoder layers in the pixel decoder
    encoder_ffn_dim: int = 1024
    deformable_points: int = 4  # sampling points per head and level
    group_norm_groups: int = 32
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0..255
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisibility: int = 32  # inputs are zero-padded (after normalisation) to a multiple


@dataclass
class LossConfig:
    """Set criterion (Hungarian matching + point-sampled mask losses)."""

    class_weight: float = 2.0
    mask_weight: float = 5.0  # sigmoid BCE on sampled points
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544  # 112 * 112 points per mask
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    matcher: str = "scipy"  # "scipy" (linear_sum_assignment on the host) or "device" (on the accelerator, XLA/TPU)
    random_points: str = "fresh"  # importance sampling's random share: "fresh" uniform (official) or "oversampled"


@dataclass
class DataConfig:
    """Datasets and augmentation."""

    train_files: str = "datasets/coco/tfrecords/train-*.tfrecord"
    val_files: str = "datasets/coco/tfrecords/val-*.tfrecord"
    categories_file: str = ""  # written by convert_coco_to_tfrecord.py beside the shards
    image_size: tuple[int, int] = (1024, 1024)  # training crop (height, width)
    scale_range: tuple[float, float] = (0.1, 2.0)  # large-scale jitter
    horizontal_flip: bool = True
    augmentation: str = "lsj"  # "lsj" (COCO) or "ade20k" (shortest-edge jitter + crop + colour)
    image_pad_value: float = 128.0
    ignore_label: int = 255
    min_size_test: int = 800
    max_size_test: int = 1333
    max_instances: int = 128  # targets are padded to this many masks (static shapes)
    shuffle_buffer: int = 1024
    cache: bool = False
    seed: int | None = None


@dataclass
class TrainConfig:
    """Optimisation, schedule, distribution and checkpoints."""

    batch_size: int = 16  # global batch per optimizer step
    accumulation_steps: int = 1  # micro-batches per optimizer step
    max_steps: int = 368750  # optimizer steps (50 COCO epochs at batch 16)
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    backbone_lr_multiplier: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    clip_grad_norm: float = 0.01  # global norm
    lr_schedule: str = "step"  # "step", "poly" or "cosine"
    lr_decay_steps: tuple[int, ...] = (327778, 355092)
    lr_decay_factor: float = 0.1
    poly_power: float = 0.9
    warmup_steps: int = 0
    mixed_precision: str = "mixed_float16"  # "float32", "mixed_float16" or "mixed_bfloat16"
    jit_compile: bool = False
    recompute_encoder: bool = False  # recompute each encoder layer in the backward pass: less memory, slower
    distribution: str = "auto"  # "auto", "default", "mirrored", "multi_worker", "tpu"; JAX: DataParallel on auto
    tpu_address: str = ""
    backbone_weights: str = "R-50.pkl"  # detectron2 ImageNet weights (path or model-zoo name)
    init_checkpoint: str = ""  # an official Mask2Former .pkl to fine-tune from
    output_dir: str = "runs/mask2former"
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    log_every: int = 20
    max_nonfinite_steps: int = 5  # stop after this many non-finite losses in a row
    seed: int = 42


@dataclass
class InferenceConfig:
    """Post-processing and rendering."""

    task: str = "instance"  # "instance", "panoptic" or "semantic"
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    instances_per_image: int = 100  # top-k over queries x classes
    score_threshold: float = 0.5  # only for rendering
    batch_size: int = 1
    compile: str = "auto"  # "xla", "function" (TF graph), "eager"; auto: function on a TF CPU, else xla


SECTIONS = {
    "model": ModelConfig,
    "loss": LossConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "inference": InferenceConfig,
}


@dataclass
class Mask2FormerConfig:
    """The whole configuration, one section per concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    # ---------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str) -> Mask2FormerConfig:
        """Returns the named recipe: one of `PRESETS`."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]()

    # ------------------------------------------------------------ validation
    def validate(self) -> Mask2FormerConfig:
        """Raises ConfigError naming the first wrong field and how to fix it."""
        m, loss, d, t, inf = self.model, self.loss, self.data, self.train, self.inference
        checks = [
            (m.num_classes >= 1, "model.num_classes must be >= 1"),
            (m.num_queries >= 1, "model.num_queries must be >= 1"),
            (m.backbone in ("resnet", "swin"), "model.backbone must be 'resnet' or 'swin'"),
            (len(m.backbone_stage_blocks) == 4, "model.backbone_stage_blocks needs 4 stage depths"),
            (all(b >= 1 for b in m.backbone_stage_blocks), "model.backbone_stage_blocks must be >= 1"),
            (m.backbone_res2_channels % 4 == 0, "model.backbone_res2_channels must be divisible by 4"),
            (
                len(m.swin_depths) == len(m.swin_num_heads) == 4 and all(d >= 1 for d in m.swin_depths),
                "model.swin_depths and model.swin_num_heads need 4 stages each, at least 1 block per stage",
            ),
            (
                all(m.swin_embed_dim * 2**i % h == 0 for i, h in enumerate(m.swin_num_heads)),
                "model.swin_embed_dim * 2**i must be divisible by model.swin_num_heads[i]",
            ),
            (m.swin_window_size >= 2, "model.swin_window_size must be >= 2"),
            (0.0 <= m.swin_drop_path_rate < 1.0, "model.swin_drop_path_rate must be in [0, 1)"),
            (m.hidden_dim % m.num_heads == 0, "model.hidden_dim must be divisible by model.num_heads"),
            (
                m.pixel_decoder_dim % m.num_heads == 0,
                "model.pixel_decoder_dim must be divisible by model.num_heads",
            ),
            (
                m.pixel_decoder_dim % m.group_norm_groups == 0,
                "model.pixel_decoder_dim must be divisible by model.group_norm_groups",
            ),
            (
                m.pixel_decoder_dim == m.hidden_dim,
                "model.pixel_decoder_dim must equal model.hidden_dim (the decoder has no input projection)",
            ),
            (m.hidden_dim % 2 == 0, "model.hidden_dim must be even (sine position encoding)"),
            (m.num_decoder_layers >= 1, "model.num_decoder_layers must be >= 1"),
            (m.encoder_layers >= 0, "model.encoder_layers must be >= 0"),
            (m.size_divisibility % 32 == 0, "model.size_divisibility must be a multiple of 32"),
            (all(s > 0 for s in m.pixel_std), "model.pixel_std must be positive"),
            (loss.matcher in ("scipy", "device", "tf"), "loss.matcher must be 'scipy' or 'device'"),
            (
                loss.random_points in ("fresh", "oversampled"),
                "loss.random_points must be 'fresh' or 'oversampled'",
            ),
            (0.0 <= loss.importance_sample_ratio <= 1.0, "loss.importance_sample_ratio must be in [0, 1]"),
            (loss.oversample_ratio >= 1.0, "loss.oversample_ratio must be >= 1"),
            (loss.num_points >= 1, "loss.num_points must be >= 1"),
            (0.0 < loss.no_object_weight, "loss.no_object_weight must be > 0"),
            (
                all(s % 32 == 0 for s in d.image_size),
                "data.image_size must be multiples of 32, e.g. (1024, 1024)",
            ),
            (0 < d.scale_range[0] <= d.scale_range[1], "data.scale_range must be (low, high) with 0 < low <= high"),
            (d.augmentation in ("lsj", "ade20k"), "data.augmentation must be 'lsj' or 'ade20k'"),
            (d.max_instances >= 1, "data.max_instances must be >= 1"),
            (d.min_size_test <= d.max_size_test, "data.min_size_test must be <= data.max_size_test"),
            (t.batch_size >= 1, "train.batch_size must be >= 1"),
            (t.accumulation_steps >= 1, "train.accumulation_steps must be >= 1"),
            (
                t.batch_size % t.accumulation_steps == 0,
                f"train.batch_size ({t.batch_size}) must be divisible by train.accumulation_steps "
                f"({t.accumulation_steps})",
            ),
            (t.max_steps >= 1, "train.max_steps must be >= 1"),
            (t.learning_rate > 0, "train.learning_rate must be > 0"),
            (t.lr_schedule in ("step", "poly", "cosine"), "train.lr_schedule must be 'step', 'poly' or 'cosine'"),
            (
                list(t.lr_decay_steps) == sorted(t.lr_decay_steps),
                "train.lr_decay_steps must be increasing",
            ),
            (0 <= t.warmup_steps < t.max_steps, "train.warmup_steps must be in [0, train.max_steps)"),
            (
                t.mixed_precision in ("float32", "mixed_float16", "mixed_bfloat16"),
                "train.mixed_precision must be 'float32', 'mixed_float16' or 'mixed_bfloat16'",
            ),
            (
                t.distribution in ("auto", "default", "mirrored", "multi_worker", "tpu"),
                "train.distribution must be 'auto', 'default', 'mirrored', 'multi_worker' or 'tpu'",
            ),
            (
                not (t.jit_compile and loss.matcher == "scipy"),
                "train.jit_compile=true cannot compile loss.matcher='scipy' (numpy_function); set loss.matcher='device'",
            ),
            (
                not (t.distribution == "tpu" and loss.matcher == "scipy"),
                "loss.matcher='scipy' cannot run on TPU (no numpy_function there); set loss.matcher='device'",
            ),
            (t.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
            (t.max_nonfinite_steps >= 1, "train.max_nonfinite_steps must be >= 1"),
            (
                inf.task in ("instance", "panoptic", "semantic"),
                "inference.task must be 'instance', 'panoptic' or 'semantic'",
            ),
            (0.0 <= inf.object_mask_threshold <= 1.0, "inference.object_mask_threshold must be in [0, 1]"),
            (0.0 <= inf.overlap_threshold <= 1.0, "inference.overlap_threshold must be in [0, 1]"),
            (inf.instances_per_image >= 1, "inference.instances_per_image must be >= 1"),
            (inf.batch_size >= 1, "inference.batch_size must be >= 1"),
            (
                inf.compile in ("auto", "xla", "function", "eager"),
                "inference.compile must be 'auto', 'xla', 'function' or 'eager'",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"invalid config: {message}.")
        return self

    # --------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: Mask2FormerConfig | None = None) -> Mask2FormerConfig:
        """Builds a config from nested dicts; unknown sections or fields raise ConfigError."""
        config = base if base is not None else cls()
        if not isinstance(values, dict):
            raise ConfigError(
                f"a config is a JSON object of sections {sorted(SECTIONS)}, not a {type(values).__name__}"
            )
        for section_name, section_values in values.items():
            if section_name not in SECTIONS:
                raise ConfigError(f"unknown config section {section_name!r}; expected one of {sorted(SECTIONS)}")
            if not isinstance(section_values, dict):
                raise ConfigError(f"config section {section_name!r} must be a JSON object of fields")
            for key, value in section_values.items():
                config.set(f"{section_name}.{key}", value)
        return config

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_json(path, self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: str) -> Mask2FormerConfig:
        return cls.from_dict(read_config_json(path))

    # -------------------------------------------------------------- overrides
    def set(self, dotted_key: str, value: Any) -> None:
        """Sets `section.field` to `value`, converting JSON / strings to the field's type."""
        section_name, _, key = dotted_key.partition(".")
        if section_name not in SECTIONS or not key:
            raise ConfigError(
                f"unknown config key {dotted_key!r}; use section.field with a section of {sorted(SECTIONS)}"
            )
        section = getattr(self, section_name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        if key not in fields:
            raise ConfigError(f"unknown config key {dotted_key!r}; {section_name} has {sorted(fields)}")
        setattr(section, key, _coerce(dotted_key, fields[key].type, getattr(section, key), value))


def _coerce(name: str, annotation: Any, current: Any, value: Any) -> Any:
    """Converts `value` (JSON value or command-line string) to the type of the field."""
    if isinstance(value, str) and not (isinstance(current, str) or "str" in str(annotation)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            lowered = value.lower()
            if lowered in ("true", "false"):
                value = lowered == "true"
            elif lowered in ("none", "null"):
                value = None
            else:
                raise ConfigError(
                    f"{name}={value!r} is not a valid value; write it as JSON, e.g. 8, 0.1, true, [3, 4]"
                ) from None
    try:
        if isinstance(current, bool):
            if not isinstance(value, bool):
                raise TypeError
        elif isinstance(current, tuple):
            value = tuple(type(current[0])(v) if current else v for v in value)
        elif isinstance(current, float):
            value = float(value)
        elif isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise TypeError
            value = int(value)
        elif isinstance(current, str):
            value = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} has the wrong type; expected {type(current).__name__}") from None
    return value


# -------------------------------------------------------------------- presets
# One preset per official model-zoo checkpoint, named `{dataset}_{task}_{backbone}` like its model-zoo
# name in model_zoo.py: the dataset and task recipe, then the backbone. Sources: the official
# configs/{coco,ade20k,cityscapes}/*/*.yaml.
def coco_instance() -> Mask2FormerConfig:
    """Official R50 COCO instance segmentation (43.7 mask AP)."""
    return Mask2FormerConfig()


def coco_panoptic() -> Mask2FormerConfig:
    """Official R50 COCO panoptic segmentation (51.9 PQ): 133 classes, same schedule."""
    config = Mask2FormerConfig()
    config.model.num_classes = 133
    config.inference.task = "panoptic"
    return config


def _shortest_edge_recipe(config, dataset, crop, test_sizes, steps) -> Mask2FormerConfig:
    """ADE20K / Cityscapes: shortest-edge jitter + crop + colour, poly schedule."""
    d, t = config.data, config.train
    d.image_size, d.augmentation = crop, "ade20k"
    d.min_size_test, d.max_size_test = test_sizes
    d.train_files = f"datasets/{dataset}/tfrecords/train-*.tfrecord"
    d.val_files = f"datasets/{dataset}/tfrecords/val-*.tfrecord"
    t.max_steps, t.lr_schedule, t.lr_decay_steps = steps, "poly", ()
    return config


def ade20k_semantic() -> Mask2FormerConfig:
    """Official R50 ADE20K semantic segmentation (47.2 mIoU): 150 classes, 160k poly schedule."""
    config = _shortest_edge_recipe(Mask2FormerConfig(), "ade20k", (512, 512), (512, 2048), 160000)
    config.model.num_classes, config.inference.task = 150, "semantic"
    return config


def ade20k_instance() -> Mask2FormerConfig:
    """Official R50 ADE20K instance segmentation (26.4 AP): 100 thing classes, 640 crops."""
    config = _shortest_edge_recipe(Mask2FormerConfig(), "ade20k", (640, 640), (640, 2560), 160000)
    config.model.num_classes, config.inference.task = 100, "instance"
    return config


def ade20k_panoptic() -> Mask2FormerConfig:
    """Official R50 ADE20K panoptic segmentation (39.7 PQ): 150 classes, 640 crops."""
    config = _shortest_edge_recipe(Mask2FormerConfig(), "ade20k", (640, 640), (640, 2560), 160000)
    config.model.num_classes, config.inference.task = 150, "panoptic"
    return config


def _cityscapes(task: str, num_classes: int) -> Mask2FormerConfig:
    """Official Cityscapes recipe: 512 x 1024 crops, shortest edge jittered in 0.5..2.0 x 1024 (longest
    at most 4096), test shortest edge 1024 (longest 2048), 90k poly."""
    config = _shortest_edge_recipe(Mask2FormerConfig(), "cityscapes", (512, 1024), (1024, 2048), 90000)
    config.model.num_classes, config.inference.task = num_classes, task
    return config


def cityscapes_semantic() -> Mask2FormerConfig:
    """Official R50 Cityscapes semantic segmentation (79.4 mIoU): 19 classes."""
    return _cityscapes("semantic", 19)


def cityscapes_instance() -> Mask2FormerConfig:
    """Official R50 Cityscapes instance segmentation (37.4 AP): 8 thing classes."""
    return _cityscapes("instance", 8)


def cityscapes_panoptic() -> Mask2FormerConfig:
    """Official R50 Cityscapes panoptic segmentation (62.1 PQ): 19 classes."""
    return _cityscapes("panoptic", 19)


_SWIN_B = {
    "swin_embed_dim": 128,
    "swin_depths": (2, 2, 18, 2),
    "swin_num_heads": (4, 8, 16, 32),
    "swin_window_size": 12,
}
# backbone -> (ModelConfig fields, ImageNet starting weights the official config names)
BACKBONES = {
    "r50": ({}, "R-50.pkl"),
    "r101": ({"backbone_stage_blocks": (3, 4, 23, 3)}, "R-101.pkl"),
    "swin_t": (
        {"swin_embed_dim": 96, "swin_depths": (2, 2, 6, 2), "swin_num_heads": (3, 6, 12, 24), "swin_window_size": 7},
        "swin_tiny_patch4_window7_224.pkl",
    ),
    "swin_s": (
        {"swin_embed_dim": 96, "swin_depths": (2, 2, 18, 2), "swin_num_heads": (3, 6, 12, 24), "swin_window_size": 7},
        "swin_small_patch4_window7_224.pkl",
    ),
    "swin_b": (_SWIN_B, "swin_base_patch4_window12_384.pkl"),
    "swin_b_in21k": (_SWIN_B, "swin_base_patch4_window12_384_22k.pkl"),
    "swin_l_in21k": (
        {
            "swin_embed_dim": 192,
            "swin_depths": (2, 2, 18, 2),
            "swin_num_heads": (6, 12, 24, 48),
            "swin_window_size": 12,
        },
        "swin_large_patch4_window12_384_22k.pkl",
    ),
}


def quickstart() -> Mask2FormerConfig:
    """A CPU-sized model on the synthetic shapes dataset (`python quickstart.py`): learns in minutes.

    The architecture keeps every part of Mask2Former (ResNet, deformable pixel decoder, masked
    attention) at a small width and depth; 128 x 128 images, light jitter, fewer points per mask.
    """
    config = Mask2FormerConfig()
    m = config.model
    m.num_classes, m.num_queries = 4, 16
    m.backbone_stage_blocks, m.backbone_stem_channels, m.backbone_res2_channels = (1, 1, 1, 1), 32, 64
    m.hidden_dim = m.pixel_decoder_dim = m.mask_dim = 64
    m.num_heads, m.decoder_ffn_dim, m.encoder_ffn_dim = 4, 256, 256
    m.num_decoder_layers, m.encoder_layers = 3, 2
    config.loss.num_points = 1024  # the predicted masks have 32 x 32 pixels
    d = config.data
    d.train_files = "datasets/quickstart/tfrecords/train-*.tfrecord"
    d.val_files = "datasets/quickstart/tfrecords/val-*.tfrecord"
    d.categories_file = "datasets/quickstart/tfrecords/categories.json"
    d.image_size, d.scale_range = (128, 128), (0.8, 1.25)
    d.min_size_test, d.max_size_test, d.max_instances = 128, 128, 8
    d.shuffle_buffer, d.seed = 512, 0
    t = config.train
    t.batch_size, t.max_steps, t.learning_rate = 8, 2000, 1e-3
    t.lr_schedule, t.lr_decay_steps = "step", (1700,)
    t.backbone_lr_multiplier = 1.0  # trained from scratch: no ImageNet backbone to protect
    t.mixed_precision, t.backbone_weights = "float32", ""
    t.output_dir, t.checkpoint_every, t.log_every = "runs/quickstart", 100, 10
    config.inference.score_threshold = 0.5
    return config


# The official per-model changes beyond the backbone ("section.field": value), by zoo name.
_SWIN_L_QUERIES = {"model.num_queries": 200}  # the semantic Swin-L configs keep 100
_RES640 = {"data.image_size": (640, 640), "data.min_size_test": 640, "data.max_size_test": 2560}
ZOO_CHANGES = {
    "coco_instance_swin_l_in21k": {
        **_SWIN_L_QUERIES,
        "train.max_steps": 737500,
        "train.lr_decay_steps": (655556, 710184),
    },
    "coco_panoptic_swin_l_in21k": {
        **_SWIN_L_QUERIES,
        "train.max_steps": 737500,
        "train.lr_decay_steps": (655556, 710184),
    },
    "ade20k_instance_swin_l_in21k": _SWIN_L_QUERIES,
    "ade20k_panoptic_swin_l_in21k": _SWIN_L_QUERIES,
    "cityscapes_instance_swin_l_in21k": _SWIN_L_QUERIES,
    "cityscapes_panoptic_swin_l_in21k": _SWIN_L_QUERIES,
    "ade20k_semantic_swin_b": _RES640,
    "ade20k_semantic_swin_b_in21k": _RES640,
    "ade20k_semantic_swin_l_in21k": _RES640,
}
RECIPES = {
    recipe.__name__: recipe
    for recipe in (
        coco_instance,
        coco_panoptic,
        ade20k_semantic,
        ade20k_instance,
        ade20k_panoptic,
        cityscapes_semantic,
        cityscapes_instance,
        cityscapes_panoptic,
    )
}


def zoo_preset(name: str) -> Mask2FormerConfig:
    """The preset of model-zoo model `name` (`{dataset}_{task}_{backbone}`): its recipe, its backbone with
    the ImageNet weights the official config names, then its `ZOO_CHANGES`."""
    dataset, task, backbone = name.split("_", 2)
    config = RECIPES[f"{dataset}_{task}"]()
    fields, weights = BACKBONES[backbone]
    for key, value in fields.items():
        setattr(config.model, key, value)
    config.model.backbone = "swin" if backbone.startswith("swin") else "resnet"
    config.train.backbone_weights = weights
    for key, value in ZOO_CHANGES.get(name, {}).items():
        config.set(key, value)
    return config


# name -> a function making the preset: the quickstart, the R50 recipes under their short names, and one
# per model-zoo model (model_zoo.ZOO_MODELS), recipe by recipe
PRESETS = {
    "quickstart": quickstart,
    **RECIPES,
    **{
        name: functools.partial(zoo_preset, name)
        for recipe in RECIPES
        for name in ZOO_MODELS
        if name.startswith(f"{recipe}_")
    },
}


def read_config_json(path: str) -> dict[str, Any]:
    """A config file's JSON object; ConfigError naming the file when it is missing or not JSON."""
    return read_json(path, "config", "fix or regenerate it", ConfigError)

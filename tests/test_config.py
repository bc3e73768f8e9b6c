"""Config: defaults are the paper's recipe, validation names the field, JSON and CLI round-trip."""

import argparse

import pytest

from cli import add_config_arguments, config_from_args
from config import ConfigError, Mask2FormerConfig


def test_defaults_are_official_r50_coco_instance_recipe():
    c = Mask2FormerConfig().validate()
    assert (c.model.num_queries, c.model.hidden_dim, c.model.num_decoder_layers) == (100, 256, 9)
    assert (c.model.encoder_layers, c.model.encoder_ffn_dim, c.model.decoder_ffn_dim) == (6, 1024, 2048)
    assert (c.loss.class_weight, c.loss.mask_weight, c.loss.dice_weight, c.loss.no_object_weight) == (2, 5, 5, 0.1)
    assert c.loss.num_points == 112 * 112
    assert (c.train.learning_rate, c.train.weight_decay, c.train.clip_grad_norm) == (1e-4, 0.05, 0.01)
    assert c.train.lr_decay_steps == (327778, 355092) and c.train.max_steps == 368750


@pytest.mark.parametrize("name", ["coco_instance", "coco_panoptic", "ade20k_semantic"])
def test_presets_validate(name):
    Mask2FormerConfig.preset(name).validate()


def test_validate_names_the_field():
    c = Mask2FormerConfig()
    c.train.batch_size, c.train.accumulation_steps = 16, 3
    with pytest.raises(ConfigError, match="train.batch_size"):
        c.validate()
    c = Mask2FormerConfig()
    c.train.jit_compile = True
    with pytest.raises(ConfigError, match="loss.matcher='device'"):
        c.validate()
    c = Mask2FormerConfig()
    c.train.distribution = "tpu"
    with pytest.raises(ConfigError, match="loss.matcher='device'"):
        c.validate()


def test_json_round_trip(tmp_path):
    c = Mask2FormerConfig.preset("ade20k_semantic")
    c.model.backbone_stage_blocks = (1, 1, 1, 1)
    c.save(str(tmp_path / "c.json"))
    assert Mask2FormerConfig.load(str(tmp_path / "c.json")) == c


def test_command_line_overrides(tmp_path):
    parser = add_config_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--preset",
            "coco_panoptic",
            "--set",
            "train.batch_size=8",
            "data.image_size=[512,512]",
            "train.jit_compile=true",
            "loss.matcher=tf",
        ]
    )
    c = config_from_args(args)
    assert c.model.num_classes == 133 and c.train.batch_size == 8
    assert c.data.image_size == (512, 512) and c.train.jit_compile is True
    with pytest.raises(ConfigError, match="train.nope"):
        config_from_args(parser.parse_args(["--set", "train.nope=1"]))
    with pytest.raises(ConfigError, match="wrong type"):
        config_from_args(parser.parse_args(["--set", "train.batch_size=[1]"]))
    with pytest.raises(ConfigError, match="does not exist"):
        config_from_args(parser.parse_args(["--config", str(tmp_path / "missing.json")]))

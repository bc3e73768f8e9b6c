"""Small shared builders for tests."""

from config import Mask2FormerConfig


def tiny_config(**model_overrides) -> Mask2FormerConfig:
    """A model small enough for CPU tests that keeps every architectural feature (10 prediction sets)."""
    config = Mask2FormerConfig()
    sizes = {
        "num_classes": 5,
        "num_queries": 7,
        "backbone_stage_blocks": (1, 1, 1, 1),
        "backbone_stem_channels": 16,
        "backbone_res2_channels": 32,
        "hidden_dim": 32,
        "num_heads": 4,
        "decoder_ffn_dim": 64,
        "pixel_decoder_dim": 32,
        "mask_dim": 32,
        "encoder_layers": 2,
        "encoder_ffn_dim": 64,
        **model_overrides,
    }
    for key, value in sizes.items():
        setattr(config.model, key, value)
    return config.validate()

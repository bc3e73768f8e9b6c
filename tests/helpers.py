"""Small shared builders for tests."""

from config import Mask2FormerConfig
from tests.hf_reference import SIZES


def tiny_config(**model_overrides) -> Mask2FormerConfig:
    """A model small enough for CPU tests that keeps every architectural feature (10 prediction sets)."""
    config = Mask2FormerConfig()
    for key, value in {**SIZES["tiny"]["model"], **model_overrides}.items():
        setattr(config.model, key, value)
    return config.validate()


def tiny_swin_config(**model_overrides) -> Mask2FormerConfig:
    """`tiny_config`'s decoder on a tiny Swin (window 3, no stochastic depth)."""
    swin = {
        "backbone": "swin",
        "swin_embed_dim": 8,
        "swin_depths": (1, 2, 1, 2),
        "swin_num_heads": (1, 2, 2, 4),
        "swin_window_size": 3,
        "swin_drop_path_rate": 0.0,
    }
    return tiny_config(**{**swin, **model_overrides})

"""Small shared builders for tests."""

from config import Mask2FormerConfig
from tools.hf_reference import SIZES


def tiny_config(**model_overrides) -> Mask2FormerConfig:
    """A model small enough for CPU tests that keeps every architectural feature (10 prediction sets)."""
    config = Mask2FormerConfig()
    for key, value in {**SIZES["tiny"]["model"], **model_overrides}.items():
        setattr(config.model, key, value)
    return config.validate()

"""Set criterion of Mask2Former: Hungarian matching and point-sampled mask losses (keras.ops, every backend)."""

from losses.criterion import SetCriterion, SetPoints, build_criterion
from losses.matcher import HungarianMatcher

__all__ = ["HungarianMatcher", "SetCriterion", "SetPoints", "build_criterion"]

"""Set criterion of Mask2Former: Hungarian matching and point-sampled mask losses."""

from losses.criterion import SetCriterion, SetPoints, build_criterion
from losses.matcher import HungarianMatcher, linear_sum_assignment_tf

__all__ = ["HungarianMatcher", "SetCriterion", "SetPoints", "build_criterion", "linear_sum_assignment_tf"]

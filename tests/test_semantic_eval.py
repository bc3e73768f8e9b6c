"""mIoU / accuracy: a hand-counted example, ignore label, classes absent from the ground truth."""

import numpy as np
import pytest

from evaluation.semantic import SemanticEvaluator


def test_hand_counted_example():
    evaluator = SemanticEvaluator(num_classes=3, ignore_label=255)
    evaluator.update_state(np.array([[0, 0, 1, 1], [255, 1, 1, 1]]), np.array([[0, 1, 1, 1], [2, 1, 1, 0]]))
    evaluator.update_state(np.array([[0]]), np.array([[0]]))
    result = evaluator.result()
    # class 0: gt 3 px, pred 3 px (ignored pixel not counted), tp 2 -> IoU 2/4; class 1: gt 5, pred 5, tp 4 -> 4/6
    # class 2: never in the ground truth -> not averaged
    assert result["mIoU"] == pytest.approx((2 / 4 + 4 / 6) / 2, abs=1e-12)
    assert result["pACC"] == pytest.approx(6 / 8, abs=1e-12)
    assert result["mACC"] == pytest.approx((2 / 3 + 4 / 5) / 2, abs=1e-12)
    assert result["fwIoU"] == pytest.approx(3 / 8 * 2 / 4 + 5 / 8 * 4 / 6, abs=1e-12)
    assert np.isnan(result["per_class"]["2"]["IoU"])
    evaluator.reset()
    assert evaluator.confusion.sum() == 0


def test_bad_labels_are_named():
    evaluator = SemanticEvaluator(num_classes=2)
    with pytest.raises(ValueError, match=r"\[0, 2\) or 255"):
        evaluator.update_state(np.array([[3]]), np.array([[0]]))
    with pytest.raises(ValueError, match="differ in size"):
        evaluator.update_state(np.zeros((2, 2)), np.zeros((2, 3)))

"""Semantic segmentation metrics: mIoU, frequency-weighted IoU, mean and pixel accuracy.

The definitions are detectron2's `SemSegEvaluator` (what Mask2Former reports): one confusion matrix
over all images; ground-truth pixels equal to `ignore_label` are left out; a class counts in mIoU and
mACC only when it appears in the ground truth.
"""

from __future__ import annotations

import numpy as np


class SemanticEvaluator:
    """`reset / update_state / result` over (H, W) label maps with contiguous classes 0..K-1.

    Args:
        num_classes: K.
        ignore_label: ground-truth value that is not evaluated (255 in COCO-stuff / ADE20K files).
        class_names: optional names for the per-class table.
    """

    def __init__(self, num_classes: int, ignore_label: int = 255, class_names=None):
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.class_names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)  # [gt, pred]

    def update_state(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Adds one image: ground-truth and predicted (H, W) integer label maps of the same size."""
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size; resize first")
        keep = gt != self.ignore_label
        gt, pred = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
        if gt.size and (gt.min() < 0 or gt.max() >= self.num_classes):
            raise ValueError(
                f"ground-truth labels must be in [0, {self.num_classes}) or {self.ignore_label}; "
                f"found {int(gt.min())}..{int(gt.max())}"
            )
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"predicted labels must be in [0, {self.num_classes})")
        k = self.num_classes
        self.confusion += np.bincount(gt * k + pred, minlength=k * k).reshape(k, k)

    def result(self) -> dict:
        """{"mIoU", "fwIoU", "mACC", "pACC", "per_class": {name: {"IoU", "ACC"}}}; NaN per class when absent."""
        confusion = self.confusion.astype(np.float64)
        true_positive = np.diag(confusion)
        gt_pixels = confusion.sum(1)
        pred_pixels = confusion.sum(0)
        union = gt_pixels + pred_pixels - true_positive
        present = gt_pixels > 0
        valid = present & (union > 0)
        iou = np.full(self.num_classes, np.nan)
        acc = np.full(self.num_classes, np.nan)
        iou[valid] = true_positive[valid] / union[valid]
        acc[present] = true_positive[present] / gt_pixels[present]
        total = gt_pixels.sum()
        frequency = gt_pixels / total if total else gt_pixels
        return {
            "mIoU": float(np.mean(iou[valid])) if valid.any() else 0.0,
            "fwIoU": float(np.sum(iou[valid] * frequency[valid])),
            "mACC": float(np.mean(acc[present])) if present.any() else 0.0,
            "pACC": float(true_positive.sum() / total) if total else 0.0,
            "per_class": {
                name: {"IoU": float(iou[k]), "ACC": float(acc[k])} for k, name in enumerate(self.class_names)
            },
        }

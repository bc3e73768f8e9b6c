"""COCO mask and box AP with pycocotools (the reference), plus the result-format helpers.

    evaluator = CocoEvaluator("instances_val2017.json")           # or a pycocotools COCO object
    evaluator.update_state(image_id, instances, category_ids)     # one image of `InstanceResult`
    evaluator.result()   # {"segm": {"AP": ..., "AP50": ..., ...}, "bbox": {...}}

`evaluate_coco_results(gt, results)` evaluates a COCO results list (or JSON file) made elsewhere.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# The 12 numbers of COCOeval.summarize(), in its order.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def encode_masks(masks: np.ndarray) -> list[dict]:
    """(N, H, W) bool -> COCO compressed RLEs with `counts` as str (JSON-ready)."""
    if len(masks) == 0:
        return []
    masks = np.asarray(masks)
    masks = masks.view(np.uint8) if masks.dtype == bool else masks.astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))  # no copy for instance_inference's masks
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) [x0, y0, x1, y1] -> COCO [x, y, width, height]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def instances_to_coco_results(image_id: int, instances, category_ids) -> list[dict]:
    """One image's `InstanceResult` -> COCO result dicts (segmentation RLE, bbox xywh, score).

    `category_ids[k]` is the dataset id of contiguous class k.
    """
    rles = encode_masks(instances.masks)
    boxes = xyxy_to_xywh(instances.boxes)
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(label)]),
            "segmentation": rle,
            "bbox": [round(float(v), 2) for v in box],
            "score": float(score),
        }
        for rle, box, label, score in zip(rles, boxes, instances.labels, instances.scores, strict=True)
    ]


def load_coco(gt) -> COCO:
    """A pycocotools COCO from a path or an already loaded COCO, without its prints."""
    if isinstance(gt, COCO):
        return gt
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(gt))


def evaluate_coco_results(gt, results: list[dict], iou_types=("segm", "bbox")) -> dict:
    """COCOeval over all ground-truth images for each IoU type; {type: {stat name: value}}.

    `results` with `segmentation` are scored as masks, and as boxes too when they carry `bbox`
    (pycocotools would replace those boxes by the masks' own, so they are evaluated from a copy
    without masks). Types the results cannot provide are skipped.
    """
    coco_gt = load_coco(gt)
    if len(results) == 0:
        return {iou_type: dict.fromkeys(COCO_STAT_NAMES, 0.0) for iou_type in iou_types}
    image_ids = set(coco_gt.getImgIds())
    unknown = {r["image_id"] for r in results} - image_ids
    if unknown:
        raise ValueError(
            f"predictions name image ids {sorted(unknown)[:5]} that are not in the ground truth; "
            "predict on the images of the ground-truth file"
        )
    metrics = {}
    for iou_type in iou_types:
        if iou_type == "segm":
            typed = [r for r in results if "segmentation" in r]
        else:
            typed = [{k: v for k, v in r.items() if k != "segmentation"} for r in results if "bbox" in r]
        if len(typed) != len(results):
            continue
        metrics[iou_type] = _cocoeval(coco_gt, typed, iou_type)
    return metrics


def _cocoeval(coco_gt: COCO, results: list[dict], iou_type: str) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats, strict=True)}


class CocoEvaluator:
    """Collects instance predictions image by image and scores them with COCOeval.

    Args:
        gt: COCO instances JSON path or a pycocotools `COCO`.
        iou_types: "segm" and/or "bbox".
    """

    def __init__(self, gt, iou_types=("segm", "bbox")):
        self.coco_gt = load_coco(gt)
        self.iou_types = tuple(iou_types)
        self.reset()

    def reset(self) -> None:
        self.results: list[dict] = []

    def update_state(self, image_id: int, instances, category_ids) -> None:
        """Adds one image's `InstanceResult`; `category_ids[k]` = dataset id of contiguous class k."""
        self.results.extend(instances_to_coco_results(image_id, instances, category_ids))

    def result(self) -> dict:
        return evaluate_coco_results(self.coco_gt, self.results, self.iou_types)

"""Evaluating prediction files made elsewhere; the kind is recognised from the files themselves.

- COCO results JSON (a list of {"image_id", "category_id", "score", "segmentation" and/or "bbox"}):
  mask AP when results carry `segmentation`, box AP when they carry `bbox`, against a COCO
  instances JSON.
- COCO panoptic JSON ({"annotations": [{"image_id", "file_name", "segments_info"}]}) plus its PNG
  folder: PQ against a COCO panoptic JSON plus its PNG folder.
"""

from __future__ import annotations

from evaluation.coco import evaluate_coco_results
from evaluation.panoptic_quality import pq_compute
from jsonfile import read_json


def prediction_kind(predictions) -> str:
    """ "coco_results" or "panoptic" from the loaded predictions JSON; ValueError otherwise."""
    if isinstance(predictions, list):
        if predictions and not all(isinstance(r, dict) and "image_id" in r and "score" in r for r in predictions):
            raise ValueError("a COCO results list needs image_id, category_id, score and segmentation or bbox")
        return "coco_results"
    if isinstance(predictions, dict):
        annotations = predictions.get("annotations")
        if isinstance(annotations, list) and all("segments_info" in a for a in annotations):
            return "panoptic"
    raise ValueError(
        "predictions are neither a COCO results list nor a COCO panoptic JSON "
        "({'annotations': [{'image_id', 'file_name', 'segments_info'}]})"
    )


def evaluate_prediction_files(
    gt_file: str,
    predictions_file: str,
    gt_dir: str | None = None,
    pred_dir: str | None = None,
    workers: int | None = None,
) -> tuple[str, dict]:
    """Returns (kind, metrics): COCO {"segm": {...}, "bbox": {...}} or panoptic {"All", "Things", "Stuff", "per_class"}."""
    predictions = read_json(predictions_file, "predictions")
    try:
        kind = prediction_kind(predictions)
    except ValueError as e:
        raise ValueError(f"{predictions_file}: {e}") from None
    if kind == "panoptic":
        gt = read_json(gt_file, "ground-truth")
        if not isinstance(gt, dict) or not all("segments_info" in a for a in gt.get("annotations", [None])):
            raise ValueError(f"{gt_file} is not a COCO panoptic JSON but {predictions_file} holds panoptic predictions")
        return kind, pq_compute(gt_file, predictions_file, gt_dir, pred_dir, workers=workers)
    if not predictions:
        raise ValueError(f"{predictions_file} holds no predictions; nothing to evaluate")
    try:
        metrics = evaluate_coco_results(gt_file, predictions)
    except ValueError as e:
        raise ValueError(f"{predictions_file}: {e}") from None
    if not metrics:
        raise ValueError(f"{predictions_file}: results carry neither 'segmentation' nor 'bbox' in every entry")
    return kind, metrics

"""One JSON per image: the results with COCO RLE masks, readable back with pycocotools.

    {"file_name", "height", "width", "task",
     "instances": [{"category_id", "category_name", "score", "bbox": [x, y, w, h], "segmentation": RLE}]}

`instances` holds, for the instance task, the non-empty instances scoring >= the threshold; for panoptic, one entry
per segment (plus "id" and "isthing"; "score" is the query's class score); for semantic, one entry
per class present (no score). `category_id` is the dataset id; RLEs are COCO compressed RLE with
`counts` as a string, so `pycocotools.mask.decode` reads them and the entries (with an `image_id`
added) are a valid COCO results list.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from evaluation.coco import encode_masks, xyxy_to_xywh
from inference.postprocess import InstanceResult, PanopticResult, SemanticResult, masks_to_boxes


def result_to_json(
    result, file_name: str, category_ids, class_names, score_threshold: float = 0.5, chunk: int = 8
) -> dict:
    """`InstanceResult` / `PanopticResult` / `SemanticResult` of one image -> a JSON-ready dict.

    The masks are boxed and encoded `chunk` at a time (100 full-size masks of a 12-megapixel photo take
    1.2 GB: no second copy of them all)."""
    if isinstance(result, InstanceResult):
        task = "instance"
        keep = np.nonzero((result.scores >= score_threshold) & result.masks.any((1, 2)))[0]  # empty: score 0

        def masks_of(rows):  # bool (n, H, W)
            return result.masks[keep[rows]]

        labels, scores = result.labels[keep], result.scores[keep]
        height, width = result.masks.shape[1:]
        extra = [{} for _ in range(len(labels))]
    elif isinstance(result, PanopticResult):
        task = "panoptic"
        segment_ids = np.array([s["id"] for s in result.segments], np.int32)

        def masks_of(rows):
            return result.segment_ids[None] == segment_ids[rows, None, None]

        labels = np.array([s["category"] for s in result.segments], np.int64)
        scores = [s["score"] for s in result.segments]
        height, width = result.segment_ids.shape
        extra = [{"id": int(s["id"]), "isthing": bool(s["isthing"])} for s in result.segments]
    elif isinstance(result, SemanticResult):
        task = "semantic"
        labels = np.unique(result.labels)

        def masks_of(rows):
            return result.labels[None] == labels[rows, None, None]

        scores = [None] * len(labels)
        height, width = result.labels.shape
        extra = [{} for _ in range(len(labels))]
    else:
        raise TypeError(f"unknown result type {type(result).__name__}")

    entries = []
    for start in range(0, len(labels), chunk):
        rows = slice(start, start + chunk)
        masks = masks_of(rows)
        boxes = xyxy_to_xywh(masks_to_boxes(masks))
        for rle, box, label, score, more in zip(
            encode_masks(masks), boxes, labels[rows], scores[rows], extra[rows], strict=True
        ):
            entry = {**more, "category_id": int(category_ids[int(label)]), "category_name": class_names[int(label)]}
            if score is not None:
                entry["score"] = round(float(score), 6)
            entry.update({"area": int(rle_area(rle)), "bbox": [float(v) for v in box], "segmentation": rle})
            entries.append(entry)
    return {"file_name": file_name, "height": int(height), "width": int(width), "task": task, "instances": entries}


def rle_area(rle: dict) -> int:
    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))

"""Checks a COCO ground-truth JSON (instances or panoptic) before any evaluation work.

pycocotools accepts an unknown category id or a negative area without a word and fails on a polygon of
fewer than 3 points only after every image was predicted (`TypeError: Argument 'bb' has incorrect type`).
`check_ground_truth(path)` reads the file once and raises ValueError naming the file and the first bad
annotation (its id) with the fix.
"""

from __future__ import annotations

import numbers

from jsonfile import read_json


def check_ground_truth(path: str) -> None:
    """Raises FileNotFoundError / ValueError (one sentence naming `path` and the annotation) on bad ground truth."""
    data = read_json(path, "ground-truth")

    def bad(what: str) -> ValueError:
        return ValueError(f"ground truth {path}: {what}; fix or remove it")

    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise bad("it is not a COCO JSON object with 'images', 'annotations' and 'categories' lists")
    categories = {c.get("id") for c in data.get("categories") or [] if isinstance(c, dict)}
    if not categories:
        raise bad("'categories' is empty or missing")
    images = {im.get("id") for im in data["images"] if isinstance(im, dict)}
    for n, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise bad(f"annotation {n} is a {type(ann).__name__}, not an object")
        name = f"annotation {ann.get('id', ann.get('file_name', n))}"
        if ann.get("image_id") not in images:
            raise bad(f"{name} refers to image id {ann.get('image_id')}, which is not in 'images'")
        if "segments_info" in ann:  # panoptic
            for segment in ann["segments_info"]:
                if segment.get("category_id") not in categories:
                    raise bad(
                        f"{name}, segment {segment.get('id')}: category id {segment.get('category_id')} is unknown"
                    )
                _check_area(segment.get("area"), f"{name}, segment {segment.get('id')}", bad)
            continue
        if ann.get("category_id") not in categories:
            raise bad(f"{name} has category id {ann.get('category_id')}, which is not in 'categories'")
        _check_area(ann.get("area"), name, bad)
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, list):
            for k, polygon in enumerate(segmentation):
                if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                    size = len(polygon) if isinstance(polygon, list) else type(polygon).__name__
                    raise bad(f"{name}: polygon {k} has {size} coordinates; a polygon needs at least 3 points")
        bbox = ann.get("bbox")
        if bbox is not None and (
            not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, numbers.Real) for v in bbox)
        ):
            raise bad(f"{name} has bbox {bbox}; a COCO bbox is [x, y, width, height]")
        if segmentation is None and bbox is None:
            raise bad(f"{name} has neither 'segmentation' nor 'bbox'")


def _check_area(area, name: str, bad) -> None:
    if area is not None and (not isinstance(area, numbers.Real) or area < 0):
        raise bad(f"{name} has area {area}; an area is a pixel count >= 0")

"""Panoptic quality (PQ, SQ, RQ) with panopticapi's rules, vectorised per image, images in parallel.

panopticapi (cocodataset/panopticapi, `evaluation.py`) is the reference; it is not on PyPI, so this
is our own implementation of exactly its rules:

- Segment ids come from the PNGs (id = R + 256 G + 256^2 B); 0 is VOID.
- Predicted areas are counted from the PNG; ground-truth areas are read from the JSON `area`.
- A ground-truth / predicted pair of the same category matches when
  IoU = inter / (pred_area + gt_area - inter - pred_on_void) > 0.5; crowd ground truth never matches.
- Unmatched non-crowd ground truth is a false negative. An unmatched prediction is a false positive
  unless more than half of it lies on VOID plus the (last listed) crowd region of its category.
- Malformed predictions raise panopticapi's KeyErrors: an id in the PNG but not in the JSON, a
  JSON segment absent from the PNG, an unknown category id.
- Per class PQ = sum IoU / (TP + FP/2 + FN/2); averages over the classes with TP + FP + FN > 0.

Usage:
    evaluator = PanopticEvaluator(categories)           # COCO panoptic `categories` entries
    evaluator.update_state(gt_ids, gt_segments, pred_ids, pred_segments)   # one image
    evaluator.result()  # {"All": {pq, sq, rq, n}, "Things": ..., "Stuff": ..., "per_class": {id: ...}}

or, for files: `pq_compute(gt_json, pred_json, gt_folder, pred_folder)`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from jsonfile import read_json

VOID = 0
OFFSET = 256 * 256 * 256  # ids of RGB PNGs are below this


def rgb_to_id(color: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 -> (H, W) uint32 segment ids, id = R + 256 G + 256^2 B."""
    color = color.astype(np.uint32)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) integer segment ids -> (H, W, 3) RGB uint8."""
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def read_panoptic_png(path: str) -> np.ndarray:
    """Reads a COCO panoptic PNG as (H, W) uint32 segment ids."""
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FileNotFoundError(f"cannot read panoptic PNG {path}; check that the file exists and is a PNG")
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"panoptic PNG {path} must be RGB (id = R + 256 G + 256^2 B), got shape {image.shape}")
    return rgb_to_id(image[..., 2::-1])  # BGR(A) -> RGB


@dataclass
class PQCounts:
    """Per-category sums over images; index = position in the category list, the last slot collects
    ground truth of categories not in the list (panopticapi counts them but never reports them)."""

    iou: np.ndarray  # float64 (C + 1,)
    tp: np.ndarray  # int64 (C + 1,)
    fp: np.ndarray
    fn: np.ndarray

    @classmethod
    def zeros(cls, num_categories: int) -> PQCounts:
        shape = (num_categories + 1,)
        return cls(np.zeros(shape), np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, np.int64))

    def __iadd__(self, other: PQCounts) -> PQCounts:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


class PanopticEvaluator:
    """Accumulates PQ statistics image by image (`reset / update_state / result`).

    Args:
        categories: list of {"id", "isthing", ...} (COCO panoptic `categories`); results are reported
            for these ids in this order, as panopticapi does.
    """

    def __init__(self, categories: list[dict]):
        self.categories = list(categories)
        self.category_ids = np.array([int(c["id"]) for c in self.categories], dtype=np.int64)
        self._lookup = {int(c["id"]): i for i, c in enumerate(self.categories)}
        self.reset()

    def reset(self) -> None:
        self.counts = PQCounts.zeros(len(self.categories))

    def update_state(
        self,
        gt_ids: np.ndarray,
        gt_segments: list[dict],
        pred_ids: np.ndarray,
        pred_segments: list[dict],
        image_id=None,
    ) -> None:
        """Adds one image: (H, W) segment-id maps and their `segments_info` lists."""
        self.counts += self.image_counts(gt_ids, gt_segments, pred_ids, pred_segments, image_id)

    def image_counts(self, gt_ids, gt_segments, pred_ids, pred_segments, image_id=None) -> PQCounts:
        """PQ statistics of one image (thread-safe: reads only the category table)."""
        return _image_counts(self._lookup, gt_ids, gt_segments, pred_ids, pred_segments, image_id)

    def result(self) -> dict:
        """{"All"|"Things"|"Stuff": {pq, sq, rq, n}, "per_class": {category id: {pq, sq, rq}}}."""
        c = self.counts
        tp, fp, fn, iou = c.tp[:-1], c.fp[:-1], c.fn[:-1], c.iou[:-1]
        present = (tp + fp + fn) > 0
        denominator = np.where(present, tp + 0.5 * fp + 0.5 * fn, 1.0)
        pq = np.where(present, iou / denominator, 0.0)
        sq = np.where(tp > 0, iou / np.maximum(tp, 1), 0.0)
        rq = np.where(present, tp / denominator, 0.0)
        isthing = np.array([c.get("isthing", 1) == 1 for c in self.categories], dtype=bool)
        results = {}
        for name, members in (("All", np.ones_like(isthing)), ("Things", isthing), ("Stuff", ~isthing)):
            chosen = members & present
            n = int(chosen.sum())
            # panopticapi divides by n and fails when a split is empty; we report zeros with n = 0.
            results[name] = {
                "pq": float(pq[chosen].sum() / n) if n else 0.0,
                "sq": float(sq[chosen].sum() / n) if n else 0.0,
                "rq": float(rq[chosen].sum() / n) if n else 0.0,
                "n": n,
            }
        results["per_class"] = {
            int(cid): {"pq": float(pq[i]), "sq": float(sq[i]), "rq": float(rq[i])}
            for i, cid in enumerate(self.category_ids)
        }
        return results


def _image_counts(lookup, gt_ids, gt_segments, pred_ids, pred_segments, image_id) -> PQCounts:
    """The per-image rules of panopticapi's `pq_compute_single_core`, on a small confusion matrix."""
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(
            f"image {image_id}: ground-truth PNG is {gt_ids.shape} but the predicted PNG is {pred_ids.shape}; "
            "predictions must be at the original image size"
        )
    num_categories = len(lookup)
    gt_by_id = {int(s["id"]): s for s in gt_segments}  # later duplicates win, as in panopticapi
    pred_by_id = {int(s["id"]): s for s in pred_segments}

    # (gt id, pred id) pairs with their pixel counts: one hash-based np.unique over the image
    if max(int(gt_ids.max(initial=0)), int(pred_ids.max(initial=0))) >= OFFSET:
        raise ValueError(f"image {image_id}: segment ids must be < 256^3 (an RGB PNG id)")
    pair_keys, pair_pixels = np.unique(
        gt_ids.astype(np.uint64) * OFFSET + pred_ids.astype(np.uint64), return_counts=True
    )
    pair_gt, pair_pred = (pair_keys // OFFSET).astype(np.int64), (pair_keys % OFFSET).astype(np.int64)

    # pairs -> row / column of a small confusion matrix
    gt_keys = np.array(sorted(gt_by_id), dtype=np.int64)
    pred_keys = np.array(sorted(pred_by_id), dtype=np.int64)
    num_gt, num_pred = len(gt_keys), len(pred_keys)
    gt_rows = _index_of(pair_gt, gt_keys)  # -1 where the id is not in the JSON
    pred_cols = _index_of(pair_pred, pred_keys)
    _check_prediction(pair_pred, pred_cols, pred_keys, pred_by_id, lookup, image_id)
    void_row = num_gt  # gt pixels 0 not listed in the JSON
    gt_rows = np.where(gt_rows >= 0, gt_rows, np.where(pair_gt == VOID, void_row, num_gt + 1))
    pred_cols = np.where(pred_cols >= 0, pred_cols, num_pred)  # pred VOID pixels (id 0 not in the JSON)
    confusion = np.zeros((num_gt + 2, num_pred + 1), np.int64)  # [gt segments + void + unlisted, pred + void]
    np.add.at(confusion, (gt_rows, pred_cols), pair_pixels)
    confusion = confusion[:, :num_pred]

    pred_area = confusion.sum(0)
    missing = pred_keys[pred_area == 0]
    if len(missing):
        raise KeyError(
            f"In the image with ID {image_id} the following segment IDs {missing.tolist()} are presented in JSON "
            "and not presented in PNG."
        )
    if VOID in gt_by_id:  # a listed segment with id 0 is also panopticapi's VOID
        void_row = int(np.searchsorted(gt_keys, VOID))
    pred_on_void = confusion[void_row]

    # category index per segment (unknown ground-truth categories go to the last slot)
    gt_cat = np.array([lookup.get(int(gt_by_id[k]["category_id"]), num_categories) for k in gt_keys], np.int64)
    pred_cat = np.array([lookup[int(pred_by_id[k]["category_id"])] for k in pred_keys], np.int64)
    gt_crowd = np.array([gt_by_id[k].get("iscrowd", 0) == 1 for k in gt_keys], dtype=bool)
    gt_area = np.array([_gt_area(gt_by_id[k], image_id) for k in gt_keys], dtype=np.int64)

    # matches: same category, not crowd, overlapping, IoU > 0.5
    intersection = confusion[:num_gt]  # [G, P]
    union = pred_area[None, :] + gt_area[:, None] - intersection - pred_on_void[None, :]
    candidate = (intersection > 0) & ~gt_crowd[:, None] & (gt_cat[:, None] == pred_cat[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(candidate, intersection / np.where(candidate, union, 1), 0.0)
    matched = candidate & (iou > 0.5)
    gt_row, pred_col = np.nonzero(matched)

    counts = PQCounts.zeros(num_categories)
    np.add.at(counts.tp, gt_cat[gt_row], 1)
    np.add.at(counts.iou, gt_cat[gt_row], iou[gt_row, pred_col])
    gt_matched, pred_matched = matched.any(1), matched.any(0)

    unmatched_gt = ~gt_matched & ~gt_crowd
    np.add.at(counts.fn, gt_cat[unmatched_gt], 1)

    # an unmatched prediction is ignored when > half of it lies on VOID plus its category's crowd region
    crowd_row_of_category = {}  # the last crowd segment of a category in JSON order wins, as in panopticapi
    for segment_id in gt_by_id:
        j = int(np.searchsorted(gt_keys, segment_id))
        if gt_crowd[j] and not gt_matched[j]:
            crowd_row_of_category[int(gt_cat[j])] = j
    ignored_area = pred_on_void.copy()
    for k in np.nonzero(~pred_matched)[0]:
        crowd_row = crowd_row_of_category.get(int(pred_cat[k]))
        if crowd_row is not None:
            ignored_area[k] += confusion[crowd_row, k]
    false_positive = ~pred_matched & ~(ignored_area / pred_area > 0.5)
    np.add.at(counts.fp, pred_cat[false_positive], 1)
    return counts


def _index_of(ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Position of each pixel id in the sorted `keys`, -1 where absent."""
    if len(keys) == 0:
        return np.full(ids.shape, -1, np.int64)
    position = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    return np.where(keys[position] == ids, position, -1)


def _check_prediction(pred_ids, pred_cols, pred_keys, pred_by_id, lookup, image_id) -> None:
    """panopticapi's sanity checks on the predicted ids present, raising the first error in id order."""
    unlisted = np.unique(pred_ids[(pred_cols < 0) & (pred_ids != VOID)])
    unknown = [int(k) for k in pred_keys if int(pred_by_id[int(k)]["category_id"]) not in lookup]
    problems = sorted([(int(i), "png") for i in unlisted] + [(k, "category") for k in unknown])
    if not problems:
        return
    segment_id, kind = problems[0]
    if kind == "png":
        raise KeyError(
            f"In the image with ID {image_id} segment with ID {segment_id} is presented in PNG and not presented "
            "in JSON."
        )
    category_id = pred_by_id[segment_id]["category_id"]
    raise KeyError(
        f"In the image with ID {image_id} segment with ID {segment_id} has unknown category_id {category_id}."
    )


def _gt_area(segment: dict, image_id) -> int:
    if "area" not in segment:
        raise KeyError(f"In the image with ID {image_id} ground-truth segment {segment.get('id')} has no 'area'.")
    return int(segment["area"])


# ------------------------------------------------------------------------------------------ files
def pq_compute(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: str | None = None,
    pred_folder: str | None = None,
    workers: int | None = None,
) -> dict:
    """panopticapi's `pq_compute`: COCO panoptic JSON + PNG folder for ground truth and predictions.

    Folders default to the JSON path without `.json`, as in panopticapi. Images run on `workers`
    threads (PNG decoding and NumPy release the GIL). Returns `PanopticEvaluator.result()`.
    """
    gt_json, pred_json = read_json(gt_json_file, "ground-truth"), read_json(pred_json_file, "predictions")
    gt_folder = gt_folder or gt_json_file.replace(".json", "")
    pred_folder = pred_folder or pred_json_file.replace(".json", "")
    for folder, what in ((gt_folder, "ground truth"), (pred_folder, "predicted")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Folder {folder} with {what} segmentations doesn't exist; pass it explicitly")

    pred_annotations = {a["image_id"]: a for a in pred_json["annotations"]}
    pairs = []
    for gt_ann in gt_json["annotations"]:
        if gt_ann["image_id"] not in pred_annotations:
            raise KeyError(f"no prediction for the image with id: {gt_ann['image_id']} (in {pred_json_file})")
        pairs.append((gt_ann, pred_annotations[gt_ann["image_id"]]))

    evaluator = PanopticEvaluator(gt_json["categories"])

    def one_image(pair):
        gt_ann, pred_ann = pair
        gt_png = os.path.join(gt_folder, gt_ann["file_name"])
        pred_png = os.path.join(pred_folder, pred_ann["file_name"])
        try:
            return evaluator.image_counts(
                read_panoptic_png(gt_png),
                gt_ann["segments_info"],
                read_panoptic_png(pred_png),
                pred_ann["segments_info"],
                gt_ann["image_id"],
            )
        except KeyError as e:  # panopticapi's message, plus the files to fix
            raise KeyError(f"{e.args[0]} (files: {pred_png}, {pred_json_file})") from None

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for counts in pool.map(one_image, pairs):
            evaluator.counts += counts
    return evaluator.result()

"""A literal transcription of panopticapi's per-image PQ loop (cocodataset/panopticapi `evaluation.py`,
`pq_compute_single_core`), the reference our vectorised PQ is tested and benchmarked against."""

from collections import defaultdict

import numpy as np


def panopticapi_image(pan_gt, gt_segments, pan_pred, pred_segments):
    """`pq_compute_single_core`'s loop body for one image (cocodataset/panopticapi evaluation.py)."""
    stat = defaultdict(lambda: [0.0, 0, 0, 0])  # iou, tp, fp, fn
    gt_segms = {el["id"]: dict(el) for el in gt_segments}
    pred_segms = {el["id"]: dict(el) for el in pred_segments}
    labels, labels_cnt = np.unique(pan_pred, return_counts=True)
    for label, label_cnt in zip(labels, labels_cnt, strict=True):
        if label not in pred_segms:
            continue
        pred_segms[label]["area"] = label_cnt
    offset = 256 * 256 * 256
    pan_gt_pred = pan_gt.astype(np.uint64) * offset + pan_pred.astype(np.uint64)
    gt_pred_map = {}
    labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
    for label, intersection in zip(labels, labels_cnt, strict=True):
        gt_pred_map[(int(label // offset), int(label % offset))] = intersection
    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), intersection in gt_pred_map.items():
        if gt_label not in gt_segms or pred_label not in pred_segms or gt_segms[gt_label]["iscrowd"] == 1:
            continue
        if gt_segms[gt_label]["category_id"] != pred_segms[pred_label]["category_id"]:
            continue
        union = (
            pred_segms[pred_label]["area"]
            + gt_segms[gt_label]["area"]
            - intersection
            - gt_pred_map.get((0, pred_label), 0)
        )
        iou = intersection / union
        if iou > 0.5:
            stat[gt_segms[gt_label]["category_id"]][1] += 1
            stat[gt_segms[gt_label]["category_id"]][0] += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)
    crowd_labels_dict = {}
    for gt_label, gt_info in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt_info["iscrowd"] == 1:
            crowd_labels_dict[gt_info["category_id"]] = gt_label
            continue
        stat[gt_info["category_id"]][3] += 1
    for pred_label, pred_info in pred_segms.items():
        if pred_label in pred_matched:
            continue
        intersection = gt_pred_map.get((0, pred_label), 0)
        if pred_info["category_id"] in crowd_labels_dict:
            intersection += gt_pred_map.get((crowd_labels_dict[pred_info["category_id"]], pred_label), 0)
        if intersection / pred_info["area"] > 0.5:
            continue
        stat[pred_info["category_id"]][2] += 1
    return stat


def panopticapi_average(stats, categories, isthing=None):
    """`PQStat.pq_average` (cocodataset/panopticapi evaluation.py): (pq, sq, rq, n) over the categories
    with any tp, fp or fn; `stats` sums `panopticapi_image` over images, `isthing` None = all."""
    pq, sq, rq, n = 0.0, 0.0, 0.0, 0
    for category in categories:
        if isthing is not None and (category["isthing"] == 1) != isthing:
            continue
        iou, tp, fp, fn = stats[category["id"]]
        if tp + fp + fn == 0:
            continue
        n += 1
        pq += iou / (tp + 0.5 * fp + 0.5 * fn)
        sq += iou / tp if tp != 0 else 0
        rq += tp / (tp + 0.5 * fp + 0.5 * fn)
    return pq / n, sq / n, rq / n, n

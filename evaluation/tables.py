"""Plain-text tables of evaluation results (what test_map.py prints)."""

from __future__ import annotations

from evaluation.coco import COCO_STAT_NAMES


def coco_table(metrics: dict) -> str:
    """{"segm": {stat: value}, "bbox": {...}} -> one row per COCO stat, one column per IoU type, in %."""
    types = [t for t in ("segm", "bbox") if t in metrics]
    lines = [f"{'':8s}" + "".join(f"{t:>8s}" for t in types)]
    for name in COCO_STAT_NAMES:
        lines.append(f"{name:8s}" + "".join(f"{100 * metrics[t][name]:8.2f}" for t in types))
    return "\n".join(lines)


def panoptic_table(metrics: dict, names: dict | None = None) -> str:
    """PQ / SQ / RQ in % for All, Things, Stuff, then per class (`names`: category id -> name)."""
    names = names or {}
    lines = [f"{'':24s}{'PQ':>7s}{'SQ':>7s}{'RQ':>7s}{'N':>5s}", "-" * 50]
    for split in ("All", "Things", "Stuff"):
        r = metrics[split]
        lines.append(f"{split:24s}{100 * r['pq']:7.2f}{100 * r['sq']:7.2f}{100 * r['rq']:7.2f}{r['n']:5d}")
    lines.append("-" * 50)
    for category_id, r in metrics["per_class"].items():
        label = f"{category_id} {names.get(int(category_id), '')}"[:24]
        lines.append(f"{label:24s}{100 * r['pq']:7.2f}{100 * r['sq']:7.2f}{100 * r['rq']:7.2f}")
    return "\n".join(lines)


def semantic_table(metrics: dict) -> str:
    """mIoU, fwIoU, mACC, pACC in %, then per-class IoU."""
    lines = ["  ".join(f"{k} {100 * metrics[k]:.2f}" for k in ("mIoU", "fwIoU", "mACC", "pACC")), "-" * 40]
    for name, r in metrics["per_class"].items():
        lines.append(f"{name[:24]:24s}{100 * r['IoU']:8.2f}")
    return "\n".join(lines)

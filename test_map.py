"""Evaluate segmentation predictions: COCO mask / box AP, panoptic quality.

Predictions made elsewhere (the kind is recognised from the files):

    # COCO results JSON (segmentation and/or bbox entries) against COCO instances
    python test_map.py --gt instances_val2017.json --predictions results.json --output metrics.json
    # COCO panoptic JSON + PNG folder against the panoptic ground truth
    python test_map.py --gt panoptic_val2017.json --gt-dir panoptic_val2017 \\
        --predictions panoptic_pred.json --pred-dir panoptic_pred --output metrics.json

It prints a table and writes `metrics.json`: `{"segm": {"AP": ..., 12 COCO stats}, "bbox": {...}}`,
or for panoptic `{"All": {"pq", "sq", "rq", "n"}, "Things": ..., "Stuff": ..., "per_class": {id: ...}}`.
On the cocoapi fake results (`../shared/testdata/coco_eval`) it prints segm AP 31.95, bbox AP 50.46.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from evaluation.files import evaluate_prediction_files, read_json
from evaluation.tables import coco_table, panoptic_table


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gt", required=True, help="ground truth: COCO instances JSON or COCO panoptic JSON")
    parser.add_argument("--predictions", required=True, help="COCO results JSON or COCO panoptic JSON")
    parser.add_argument("--gt-dir", default=None, help="panoptic ground-truth PNG folder (default: --gt without .json)")
    parser.add_argument(
        "--pred-dir", default=None, help="panoptic prediction PNG folder (default: --predictions without .json)"
    )
    parser.add_argument("--output", default="metrics.json", help="where to write the metrics JSON")
    parser.add_argument("--workers", type=int, default=None, help="threads for panoptic images (default: CPUs, max 8)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        kind, metrics = evaluate_prediction_files(args.gt, args.predictions, args.gt_dir, args.pred_dir, args.workers)
    except (FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"error: {e.args[0] if e.args else e}")
    if kind == "panoptic":
        names = {c["id"]: c.get("name", "") for c in read_json(args.gt, "ground-truth").get("categories", [])}
        print(panoptic_table(metrics, names))
    else:
        print(coco_table(metrics))
    write_metrics(metrics, args.output)
    print(f"wrote {args.output}")
    return metrics


def write_metrics(metrics: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(metrics, f, indent=1)


if __name__ == "__main__":
    main()

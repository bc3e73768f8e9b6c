"""Inference and evaluation.

- `postprocess`: model outputs -> instance / panoptic / semantic results, exactly as the official model.
- `inference`: image reading, the official test-time resize, batching, `Predictor`.
- `coco`: COCO mask / box AP with pycocotools (`CocoEvaluator`, `evaluate_coco_results`).
- `panoptic_quality`: PQ / SQ / RQ with panopticapi's rules (`PanopticEvaluator`, `pq_compute`).
- `semantic`: mIoU, fwIoU, mACC, pACC (`SemanticEvaluator`).
- `files`: evaluating prediction files made elsewhere (used by test_map.py).
- `visualize`, `export`: overlays and per-image JSON (used by test.py).

Modules are imported directly (`from evaluation.coco import ...`) so that file evaluation does not load TensorFlow.
"""

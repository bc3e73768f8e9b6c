"""Metrics: COCO AP, panoptic quality, semantic IoU, on a model or on prediction files.

- `coco`: COCO mask / box AP with pycocotools (`CocoEvaluator`, `evaluate_coco_results`).
- `panoptic_quality`: PQ / SQ / RQ with panopticapi's rules (`PanopticEvaluator`, `pq_compute`).
- `semantic`: mIoU, fwIoU, mACC, pACC (`SemanticEvaluator`).
- `files`: evaluating prediction files made elsewhere (used by test_map.py).
- `tables`: the plain-text tables test_map.py prints.

Running the model (and evaluating a model on a validation set, `inference.model_evaluation`),
post-processing and drawing live in `inference/`. Modules are imported directly
(`from evaluation.coco import ...`) so that file evaluation does not load TensorFlow.
"""

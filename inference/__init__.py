"""Running a trained model: loading, predicting, post-processing, drawing and writing results.

- `loading`: a `.keras` model, or the configured model plus weights (`load_model`).
- `predictor`: image reading, the official test-time resize, batching, `Predictor`.
- `postprocess`: model outputs -> instance / panoptic / semantic results, exactly as the official model.
- `visualize`: overlays a person can read.
- `results_json`: one JSON per image with COCO RLE masks (what test.py writes).
- `model_evaluation`: a model on a validation set (what test_map.py runs with --weights / --model).

Metrics live in `evaluation/`.
"""

"""PQ: equal to panopticapi on real files, hand-built cases pin each rule, random cases match a literal
transcription of panopticapi's per-image loop."""

import json

import numpy as np
import pytest
from conftest import SHARED_TESTDATA

from evaluation.panoptic_quality import PanopticEvaluator, pq_compute
from tools.panopticapi_reference import panopticapi_image

CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 3, "name": "sky", "isthing": 0},
]


def seg(segment_id, category_id, area=None, iscrowd=0):
    return {"id": segment_id, "category_id": category_id, "iscrowd": iscrowd, "area": area}


def counts_of(gt, gt_segments, pred, pred_segments):
    """{category id: (tp, fp, fn, iou)} for one image."""
    evaluator = PanopticEvaluator(CATEGORIES)
    for s in gt_segments:  # ground-truth areas come from the JSON: fill them from the map
        s["area"] = int((gt == s["id"]).sum()) if s["area"] is None else s["area"]
    c = evaluator.image_counts(np.asarray(gt), gt_segments, np.asarray(pred), pred_segments, image_id=7)
    return {cat["id"]: (c.tp[i], c.fp[i], c.fn[i], round(c.iou[i], 12)) for i, cat in enumerate(CATEGORIES)}


# ----------------------------------------------------------------------------------- real files
def test_equals_panopticapi_on_deeplab_testdata():
    folder = SHARED_TESTDATA / "deeplab_pq"
    if not folder.is_dir():
        pytest.skip("shared test data not available")
    expected = json.loads((folder / "EXPECTED_panopticapi_pq.json").read_text())
    result = pq_compute(
        str(folder / "coco_gt.json"), str(folder / "coco_pred.json"), str(folder / "coco_gt"), str(folder / "coco_pred")
    )
    for split in ("All", "Things", "Stuff"):
        assert result[split]["n"] == expected[split]["n"]
        for key in ("pq", "sq", "rq"):
            assert abs(result[split][key] - expected[split][key]) <= 1e-9, (split, key)
    assert abs(result["All"]["pq"] - 0.6740486628641355) <= 1e-9
    for category_id, values in expected["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert abs(result["per_class"][int(category_id)][key] - values[key]) <= 1e-9


def test_ground_truth_against_itself_is_perfect():
    folder = SHARED_TESTDATA / "panopticapi" / "sample_data"
    if not folder.is_dir():
        pytest.skip("shared test data not available")
    json_file, png_folder = str(folder / "panoptic_examples.json"), str(folder / "panoptic_examples")
    result = pq_compute(json_file, json_file, png_folder, png_folder)
    assert result["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 8}
    assert result["Things"]["n"] == 4 and result["Stuff"]["n"] == 4


# ----------------------------------------------------------------------------- hand-built rules
def test_match_needs_iou_above_half_and_same_category():
    gt = np.array([[5, 5, 5, 5, 5, 5, 6, 6]])
    pred = np.array([[1, 1, 1, 1, 2, 2, 2, 2]])  # pred 1 / gt 5: IoU 4/6; pred 2 / gt 6: IoU 2/4 is not > 0.5
    c = counts_of(gt, [seg(5, 1), seg(6, 1)], pred, [seg(1, 1), seg(2, 1)])
    assert c[1] == (1, 1, 1, round(4 / 6, 12))
    c = counts_of(gt, [seg(5, 1), seg(6, 1)], pred, [seg(1, 2), seg(2, 1)])  # pred 1 is a car now
    assert c[1] == (0, 1, 2, 0.0) and c[2] == (0, 1, 0, 0.0)


def test_void_is_left_out_of_the_union_and_prediction_mostly_on_void_is_not_a_false_positive():
    gt = np.array([[5, 5, 0, 0, 0, 0]])
    pred = np.array([[1, 1, 1, 1, 2, 2]])  # pred 1: gt 5 + 2 void pixels -> IoU 2 / (4 + 2 - 2 - 2) = 1
    c = counts_of(gt, [seg(5, 1)], pred, [seg(1, 1), seg(2, 2)])
    assert c[1] == (1, 0, 0, 1.0)
    assert c[2] == (0, 0, 0, 0.0)  # pred 2 lies entirely on void: ignored


def test_crowd_region_never_matches_and_absorbs_predictions_of_its_category():
    gt = np.array([[9, 9, 9, 9, 5, 5]])
    crowd = seg(9, 1, iscrowd=1)
    # a person prediction lying mostly (3 of 4 pixels) on the person crowd: not a false positive
    c = counts_of(gt, [crowd, seg(5, 2)], np.array([[1, 1, 1, 0, 0, 1]]), [seg(1, 1)])
    assert c[1] == (0, 0, 0, 0.0) and c[2] == (0, 0, 1, 0.0)  # crowd is no false negative; the car is
    # the same region predicted as car: the person crowd does not absorb it
    c = counts_of(gt, [crowd, seg(5, 2)], np.array([[1, 1, 1, 0, 0, 1]]), [seg(1, 2)])
    assert c[2] == (0, 1, 1, 0.0)
    # exactly half on the crowd: counted (the rule is > 0.5)
    c = counts_of(gt, [crowd, seg(5, 2)], np.array([[1, 1, 0, 0, 1, 1]]), [seg(1, 1)])
    assert c[1] == (0, 1, 0, 0.0)


def test_a_listed_segment_with_id_zero_is_a_real_prediction():
    gt = np.array([[5, 5, 5, 6, 6, 6]])
    pred = np.array([[0, 0, 0, 4, 4, 4]])
    assert counts_of(gt, [seg(5, 1), seg(6, 3)], pred, [seg(0, 1), seg(4, 3)])[1] == (1, 0, 0, 1.0)
    # not listed: id 0 is void, so gt 5 is missed and nothing is a false positive
    assert counts_of(gt, [seg(5, 1), seg(6, 3)], pred, [seg(4, 3)])[1] == (0, 0, 1, 0.0)


def test_ground_truth_area_comes_from_the_json():
    gt, pred = np.array([[5, 5, 5, 5]]), np.array([[1, 1, 1, 1]])
    assert counts_of(gt, [seg(5, 1, area=6)], pred, [seg(1, 1)])[1] == (1, 0, 0, round(4 / 6, 12))


def test_malformed_predictions_raise_panopticapis_errors():
    gt = np.array([[5, 5, 6, 6]])
    segments = [seg(5, 1), seg(6, 1)]
    with pytest.raises(KeyError, match="segment with ID 3 is presented in PNG and not presented in JSON"):
        counts_of(gt, segments, np.array([[1, 1, 3, 3]]), [seg(1, 1)])
    with pytest.raises(KeyError, match=r"segment IDs \[8\] are presented in JSON and not presented in PNG"):
        counts_of(gt, segments, np.array([[1, 1, 1, 1]]), [seg(1, 1), seg(8, 1)])
    with pytest.raises(KeyError, match="segment with ID 1 has unknown category_id 42"):
        counts_of(gt, segments, np.array([[1, 1, 1, 1]]), [seg(1, 42)])
    with pytest.raises(ValueError, match="original image size"):
        counts_of(gt, segments, np.array([[1, 1]]), [seg(1, 1)])


def test_missing_prediction_for_an_image(tmp_path):
    gt = {"annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": []}], "categories": CATEGORIES}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": []}))
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    with pytest.raises(KeyError, match="no prediction for the image with id: 1"):
        pq_compute(str(tmp_path / "gt.json"), str(tmp_path / "pred.json"))
    with pytest.raises(FileNotFoundError, match="nope"):
        pq_compute(str(tmp_path / "gt.json"), str(tmp_path / "pred.json"), pred_folder=str(tmp_path / "nope"))


@pytest.mark.parametrize("seed", range(20))
def test_random_images_match_the_panopticapi_loop(seed):
    rng = np.random.default_rng(seed)
    shape = (12, 16)

    def random_map(num_segments, first_id):
        coarse = rng.integers(0, num_segments + 1, (3, 4))  # blocky layouts overlap in interesting ways
        ids = np.kron(coarse, np.ones((4, 4), np.int64))
        ids = np.where(rng.random(shape) < 0.1, rng.integers(0, num_segments + 1, shape), ids)
        return np.where(ids == 0, 0, ids + first_id)

    gt = random_map(5, 10 * rng.integers(0, 2))
    pred = random_map(5, rng.integers(-1, 2))  # sometimes a real segment has id 0
    pred = np.where(pred < 0, 0, pred)
    gt_segments = [
        {"id": int(i), "category_id": int(rng.integers(1, 4)), "iscrowd": int(rng.random() < 0.3), "area": int(a)}
        for i, a in zip(*np.unique(gt, return_counts=True), strict=True)
        if i != 0 or rng.random() < 0.5
    ]
    pred_segments = [
        {"id": int(i), "category_id": int(rng.integers(1, 4))} for i in np.unique(pred) if i != 0 or rng.random() < 0.5
    ]
    ours = counts_of(gt, gt_segments, pred, pred_segments)
    reference = panopticapi_image(gt, gt_segments, pred, pred_segments)
    for category_id, (tp, fp, fn, iou) in ours.items():
        ref_iou, ref_tp, ref_fp, ref_fn = reference.get(category_id, [0.0, 0, 0, 0])
        assert (tp, fp, fn) == (ref_tp, ref_fp, ref_fn)
        assert abs(iou - ref_iou) < 1e-12

"""test_map.py on predictions made elsewhere: COCO AP and PQ equal the reference tools' numbers."""

import json

import pytest
from conftest import SHARED_TESTDATA

import test_map
from evaluation.coco import COCO_STAT_NAMES

COCO_EVAL = SHARED_TESTDATA / "coco_eval"
DEEPLAB = SHARED_TESTDATA / "deeplab_pq"


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_reproduces_pycocotools_on_the_cocoapi_fake_results(tmp_path, iou_type):
    if not COCO_EVAL.is_dir():
        pytest.skip("shared test data not available")
    expected = json.loads((COCO_EVAL / "EXPECTED_fake100_stats.json").read_text())
    assert tuple(expected["keys"]) == COCO_STAT_NAMES
    output = tmp_path / "metrics.json"
    predictions = COCO_EVAL / "results" / f"instances_val2014_fake{iou_type}100_results.json"
    test_map.main(
        [
            "--gt",
            str(COCO_EVAL / "instances_val2014_100.json"),
            "--predictions",
            str(predictions),
            "--output",
            str(output),
        ]
    )
    written = json.loads(output.read_text())
    assert list(written) == [iou_type]
    for name, value in zip(COCO_STAT_NAMES, expected[iou_type], strict=True):
        assert abs(written[iou_type][name] - value) <= 1e-9, name


def test_panoptic_files_are_recognised_and_scored(tmp_path, capsys):
    if not DEEPLAB.is_dir():
        pytest.skip("shared test data not available")
    output = tmp_path / "metrics.json"
    test_map.main(
        [
            "--gt",
            str(DEEPLAB / "coco_gt.json"),
            "--predictions",
            str(DEEPLAB / "coco_pred.json"),
            "--output",
            str(output),
        ]
    )
    written = json.loads(output.read_text())
    assert abs(written["All"]["pq"] - 0.6740486628641355) <= 1e-9
    assert set(written) == {"All", "Things", "Stuff", "per_class"} and "1" in written["per_class"]
    assert "umbrella" in capsys.readouterr().out


def test_bad_inputs_give_one_line_errors(tmp_path):
    if not DEEPLAB.is_dir():
        pytest.skip("shared test data not available")
    (tmp_path / "weird.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(SystemExit, match="neither a COCO results list nor a COCO panoptic JSON"):
        test_map.main(["--gt", str(DEEPLAB / "coco_gt.json"), "--predictions", str(tmp_path / "weird.json")])
    with pytest.raises(SystemExit, match="does not exist"):
        test_map.main(["--gt", str(DEEPLAB / "coco_gt.json"), "--predictions", str(tmp_path / "nope.json")])
    # GT json as predictions but the GT PNGs as the prediction folder: ids differ -> panopticapi's KeyError
    with pytest.raises(SystemExit, match="presented in PNG and not presented in JSON.*coco_pred"):
        test_map.main(
            ["--gt", str(DEEPLAB / "coco_gt.json"), "--gt-dir", str(DEEPLAB / "coco_gt"),
             "--predictions", str(DEEPLAB / "coco_gt.json"), "--pred-dir", str(DEEPLAB / "coco_pred"),
             "--output", str(tmp_path / "m.json")]
        )  # fmt: skip


def test_bad_ground_truth_is_one_line_before_any_work(tmp_path, capsys):
    """Unknown category id, negative area, a 2-point polygon, an annotation of a missing image: exit 2,
    one line naming the file and the annotation id, no metrics.json."""
    import cli

    square = [2.0, 2.0, 10.0, 2.0, 10.0, 10.0, 2.0, 10.0]
    good = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [square], "area": 64.0, "bbox": [2, 2, 8, 8]}
    cases = [
        ({"id": 7, "category_id": 99}, "annotation 7 has category id 99, which is not in 'categories'"),
        ({"id": 8, "area": -3.0}, "annotation 8 has area -3.0"),
        ({"id": 9, "segmentation": [[1.0, 1.0, 5.0, 5.0]]}, "annotation 9: polygon 0 has 4 coordinates"),
        ({"id": 10, "image_id": 5}, "annotation 10 refers to image id 5, which is not in 'images'"),
        ({"id": 11, "bbox": [1, 2]}, "annotation 11 has bbox [1, 2]"),
    ]
    predictions = tmp_path / "results.json"
    predictions.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "score": 0.9}]))
    for change, message in cases:
        gt = {
            "images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 20}],
            "annotations": [good, {**good, **change}],
            "categories": [{"id": 1, "name": "thing"}],
        }
        (tmp_path / "gt.json").write_text(json.dumps(gt))
        output = tmp_path / "metrics.json"
        argv = ["--gt", str(tmp_path / "gt.json"), "--predictions", str(predictions), "--output", str(output)]
        assert cli.run(test_map.main, argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [err] and err.startswith(f"error: ground truth {tmp_path / 'gt.json'}: "), err
        assert message in err, err
        assert not output.exists()
    # the same checks hold before a model is loaded: the weights file here does not even exist
    argv = ["--weights", str(tmp_path / "none.pkl"), "--gt", str(tmp_path / "gt.json"), "--images", str(tmp_path)]
    assert cli.run(test_map.main, argv) == 2
    assert "annotation 11 has bbox" in capsys.readouterr().err

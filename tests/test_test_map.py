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

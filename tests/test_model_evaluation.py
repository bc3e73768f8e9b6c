"""test_map.py with a model: a tiny synthetic validation set as COCO JSON and as TFRecords.

A stub model that replays the ground truth as logits (at padded / 4 resolution, the model contract)
must score AP 1, PQ 1 and mIoU 1 through the same code path as a real model (the command line with
the model loader replaced); the real tiny model runs through every path and writes sane metrics.
"""

import json
from collections import defaultdict

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import inference.loading
import test_map
from data.categories import Categories
from data.coco_conversion import ConversionOptions, convert
from evaluation.panoptic_quality import PanopticEvaluator, id_to_rgb
from inference.model_evaluation import coco_json_eval_set, evaluate_model, tfrecord_eval_set
from tests.helpers import tiny_config
from tools.panopticapi_reference import panopticapi_average, panopticapi_image

CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 5, "name": "dog", "isthing": 1},
    {"id": 7, "name": "sky", "isthing": 0},
    {"id": 9, "name": "grass", "isthing": 0},
]
IMAGE_SIZES = [(64, 80), (76, 64), (64, 100)]  # multiples of 4, not of 32: padding is cropped
GOLDEN_PKL = "tests/golden/tiny_detectron2.pkl"
# The real tiny model runs uncompiled: tracing it once per padded shape is most of a run's time on a CPU.
# Compiled modes are compared with the model in tests/test_test_py.py, which also runs test.py end to end
# in the default mode (the same `compiled(model, config)` that evaluate_model calls).
EAGER = "inference.compile=eager"


def scene(index, height, width):
    """(H, W) segment ids on a 4-pixel grid (0 = void) and segments_info: stuff bands, things, a crowd."""
    ids = np.zeros((height, width), np.int32)
    shift = 4 * index
    boxes = [
        (7, 0, 0, 16, width, 0),  # category, y0, x0, y1, x1, iscrowd
        (9, height - 12, 0, height, width, 0),
        (1, 20, 8 + shift, 40, 28 + shift, 0),
        (3, 20, 32 + shift, 36, 52 + shift, 0),
        (5, 40, 36, 52, 48, 0),
        (1, 40, 8, 48, 24, 1),
    ]
    segments = []
    for n, (category, y0, x0, y1, x1, crowd) in enumerate(boxes[: 5 + (index != 1)]):
        ids[y0:y1, x0:x1] = 100 + n
        segments.append({"id": 100 + n, "category_id": category, "iscrowd": crowd})
    for segment in segments:
        segment["area"] = int((ids == segment["id"]).sum())
        ys, xs = np.nonzero(ids == segment["id"])
        segment["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return ids, segments


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Images (PNG, top-left pixel unique per image), instances JSON, panoptic JSON + PNGs, label PNGs."""
    root = tmp_path_factory.mktemp("synthetic")
    for folder in ("images", "panoptic", "labels"):
        (root / folder).mkdir()
    rng = np.random.default_rng(0)
    images, instances, panoptic, scenes = [], [], [], {}
    for index, (height, width) in enumerate(IMAGE_SIZES):
        image_id, name = 11 + index, f"im{index}"
        image = rng.integers(0, 255, (height, width, 3), np.uint8)
        image[0, 0] = (40 * index + 5, 0, 0)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        ids, segments = scene(index, height, width)
        scenes[40 * index + 5] = (ids, segments)
        cv2.imwrite(str(root / "panoptic" / f"{name}.png"), id_to_rgb(ids)[..., ::-1])
        labels = np.zeros((height, width), np.uint8)
        for s in segments:
            labels[ids == s["id"]] = s["category_id"]
        Image.fromarray(labels).save(root / "labels" / f"{name}.png")
        images.append({"id": image_id, "file_name": f"{name}.png", "height": height, "width": width})
        panoptic.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": segments})
        for s in segments:
            if CATEGORIES[[c["id"] for c in CATEGORIES].index(s["category_id"])]["isthing"]:
                rle = mask_utils.encode(np.asfortranarray((ids == s["id"]).astype(np.uint8)))
                rle["counts"] = rle["counts"].decode()
                instances.append(
                    {"id": len(instances) + 1, "image_id": image_id, "category_id": s["category_id"],
                     "segmentation": rle, "area": s["area"], "bbox": s["bbox"], "iscrowd": s["iscrowd"]}
                )  # fmt: skip
    (root / "instances.json").write_text(
        json.dumps({"images": images, "annotations": instances, "categories": CATEGORIES})
    )
    (root / "panoptic.json").write_text(
        json.dumps({"images": images, "annotations": panoptic, "categories": CATEGORIES})
    )
    (root / "categories.json").write_text(json.dumps({"categories": CATEGORIES}))
    for prefix, extra in (
        ("both/val", {"object_annotations_file": str(root / "instances.json"),
                      "panoptic_annotations_file": str(root / "panoptic.json"),
                      "panoptic_masks_dir": str(root / "panoptic")}),
        ("semantic/val", {"semantic_masks_dir": str(root / "labels"),
                          "categories_file": str(root / "categories.json")}),
    ):  # fmt: skip
        options = ConversionOptions(
            image_dir=str(root / "images"), output_file_prefix=str(root / prefix), num_shards=1, num_workers=1,
            progress=False, **extra,
        )  # fmt: skip
        stats = convert(options, log=lambda line: None)
        assert stats.images_written == len(IMAGE_SIZES) and not stats.problems
    return root, scenes


def small_config(task):
    config = tiny_config()
    config.data.min_size_test, config.data.max_size_test = 64, 128  # no resize: the stub's masks stay exact
    config.inference.task = task
    return config.validate()


class GroundTruthReplay:
    """Model contract stub: for the image whose top-left red value names a scene, one confident query per
    ground-truth segment (crowd included), mask logits at padded / 4 resolution: +16 on the segment's
    4 x 4 cells, -10 elsewhere. Upsampled x4 bilinearly (half-pixel centres) and cut at 0 this gives the
    4-pixel-aligned segment exactly, corners included: an inside corner pixel is 0.39 P - 0.61 N > 0 and
    the first outside pixel 0.375 P - 0.625 N < 0, so P / N must lie in (1.56, 1.67)."""

    def __init__(self, scenes, num_queries=8):
        self.scenes = scenes
        self.num_queries = num_queries
        self.category_ids = [c["id"] for c in CATEGORIES]

    def __call__(self, images, training=False):
        batch, height, width, _ = images.shape
        padded_h, padded_w = -(-height // 32) * 32, -(-width // 32) * 32
        num_classes = len(CATEGORIES)
        logits = np.full((batch, self.num_queries, num_classes + 1), -10.0, np.float32)
        logits[:, :, num_classes] = 10.0  # no object
        masks = np.full((batch, self.num_queries, padded_h // 4, padded_w // 4), -10.0, np.float32)
        for b in range(batch):
            ids, segments = self.scenes[int(images[b, 0, 0, 0])]
            padded = np.zeros((padded_h, padded_w), np.int32)
            padded[: ids.shape[0], : ids.shape[1]] = ids
            for q, segment in enumerate(segments):
                logits[b, q, num_classes] = -10.0
                logits[b, q, self.category_ids.index(segment["category_id"])] = 10.0
                masks[b, q] = np.where(padded[2::4, 2::4] == segment["id"], 16.0, -10.0)
        return {"pred_logits": logits, "pred_masks": masks}


def eval_sets(root, config, task):
    """The same validation set as COCO JSON and as TFRecords."""
    gt = root / ("instances.json" if task == "instance" else "panoptic.json")
    sets = {"coco_json": coco_json_eval_set(config, str(gt), str(root / "images"), task, str(root / "panoptic"))}
    sets["tfrecords"] = tfrecord_eval_set(config, str(root / "both" / "val-*.tfrecord"), task)
    if task == "semantic":
        sets["label_png_records"] = tfrecord_eval_set(config, str(root / "semantic" / "val-*.tfrecord"), task)
    return sets


@pytest.mark.parametrize(
    "task, check",
    [
        ("instance", lambda m: (m["segm"]["AP"], m["bbox"]["AP"], m["segm"]["AR100"])),
        ("panoptic", lambda m: (m["All"]["pq"], m["Things"]["pq"], m["Stuff"]["pq"])),
        ("semantic", lambda m: (m["mIoU"], m["pACC"])),
    ],
)
def test_ground_truth_replayed_as_logits_scores_perfectly(dataset, task, check):
    root, scenes = dataset
    config = small_config(task)
    for name, eval_set in eval_sets(root, config, task).items():
        metrics = evaluate_model(GroundTruthReplay(scenes), eval_set, config, task, batch_size=2)
        assert all(value == pytest.approx(1.0, abs=1e-12) for value in check(metrics)), (name, metrics)
        if task == "panoptic":
            assert metrics["All"]["n"] == 5 and metrics["Things"]["n"] == 3
        if task == "semantic":
            assert sum(r["IoU"] == 1.0 for r in metrics["per_class"].values()) == 5


def test_a_wrong_prediction_lowers_every_metric(dataset, panoptic_images):
    """The perfect scores above can fail: moving one ground-truth box off its place costs AP, PQ and mIoU;
    the PQ is exactly panopticapi's on the same segments."""
    root, scenes = dataset
    shifted = {key: (np.roll(ids, 8, axis=1), segments) for key, (ids, segments) in scenes.items()}
    scored = {}
    for task, value in (
        ("instance", lambda m: m["segm"]["AP"]),
        ("panoptic", lambda m: m["All"]["pq"]),
        ("semantic", lambda m: m["mIoU"]),
    ):
        config = small_config(task)
        eval_set = eval_sets(root, config, task)["tfrecords"]
        scored[task] = evaluate_model(GroundTruthReplay(shifted), eval_set, config, task)
        assert value(scored[task]) < 0.9, task
    # panopticapi on these segments: the stuff bands still match (PQ 1), the things partly (PQ 0.372)
    assert scored["panoptic"]["All"]["pq"] == pytest.approx(0.623448275862069, abs=1e-12)
    assert_equals_panopticapi(scored["panoptic"], panoptic_images)


@pytest.mark.parametrize("source", ["coco_json", "tfrecords"])
def test_command_line_with_the_replay_stub_writes_perfect_metrics(dataset, tmp_path, monkeypatch, source):
    """The whole test_map.py model path (config, set, loop, table, metrics.json) with the loader replaced."""
    root, scenes = dataset
    monkeypatch.setattr(inference.loading, "load_model", lambda config, *paths: GroundTruthReplay(scenes))
    config_file = tmp_path / "tiny.json"
    small_config("panoptic").save(str(config_file))
    data = ["--gt", str(root / "panoptic.json"), "--images", str(root / "images")]
    if source == "tfrecords":
        data = ["--tfrecords", str(root / "both" / "val-*.tfrecord")]
    output = tmp_path / "metrics.json"
    test_map.main(["--weights", "any.pkl", "--config", str(config_file), *data, "--output", str(output)])
    written = json.loads(output.read_text())
    assert set(written) == {"All", "Things", "Stuff", "per_class"} and written["All"]["pq"] == pytest.approx(1.0)
    assert set(written["per_class"]) == {str(c["id"]) for c in CATEGORIES}


@pytest.fixture(scope="module")
def loaded_models():
    return {}


@pytest.fixture
def load_once(monkeypatch, loaded_models):
    """test_map.py's loader, each (model file, weights file, architecture) loaded once for this module: the
    runs of the real tiny model below differ in task and data source, not in the model."""
    real = inference.loading.load_model

    def load(config, *paths):
        key = (*paths, json.dumps(config.to_dict()["model"], sort_keys=True))
        if key not in loaded_models:
            loaded_models[key] = real(config, *paths)
        return loaded_models[key]

    monkeypatch.setattr(inference.loading, "load_model", load)


@pytest.fixture
def panoptic_images(monkeypatch):
    """The (gt ids, gt segments, predicted ids, predicted segments) of every image PQ is given."""
    seen = []
    update = PanopticEvaluator.update_state

    def spy(self, gt_ids, gt_segments, pred_ids, pred_segments, image_id=None):
        seen.append((gt_ids, [dict(s) for s in gt_segments], pred_ids, [dict(s) for s in pred_segments]))
        update(self, gt_ids, gt_segments, pred_ids, pred_segments, image_id)

    monkeypatch.setattr(PanopticEvaluator, "update_state", spy)
    return seen


def assert_equals_panopticapi(metrics: dict, images: list) -> None:
    """PQ, SQ, RQ and n of All, Things and Stuff equal panopticapi's own loop and average on `images`."""
    assert images, "PQ was given no image"
    stats = defaultdict(lambda: [0.0, 0, 0, 0])
    for image in images:
        for category, values in panopticapi_image(*image).items():
            stats[category] = [a + b for a, b in zip(stats[category], values, strict=True)]
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        expected = panopticapi_average(stats, CATEGORIES, isthing)
        got = [metrics[name][key] for key in ("pq", "sq", "rq", "n")]
        assert got == pytest.approx(expected, abs=1e-12), (name, got, expected)


# Random weights are never 0.8 sure of a class: keep every query, so that PQ sees predicted segments.
ALL_QUERIES = ["inference.object_mask_threshold=0", "inference.overlap_threshold=0"]


@pytest.mark.parametrize("task", ["instance", "panoptic", "semantic"])
def test_real_tiny_model_runs_through_every_path(dataset, tmp_path, task, capsys, load_once, panoptic_images):
    root, _ = dataset
    config_file = tmp_path / "tiny.json"
    small_config(task).save(str(config_file))
    gt = "instances.json" if task == "instance" else "panoptic.json"
    for source in (
        ["--gt", str(root / gt), "--images", str(root / "images")],
        ["--tfrecords", str(root / "both" / "val-*.tfrecord")],
    ):
        output = tmp_path / "metrics.json"
        argv = ["--weights", GOLDEN_PKL, "--config", str(config_file), *source, "--output", str(output)]
        test_map.main([*argv, "--set", EAGER, *(ALL_QUERIES if task == "panoptic" else [])])
        metrics = json.loads(output.read_text())
        if task == "instance":
            # COCOeval reports -1 for an area range without ground truth (no medium or large objects here)
            assert set(metrics) == {"segm", "bbox"} and all(v == -1 or 0 <= v <= 1 for v in metrics["segm"].values())
        elif task == "panoptic":  # random weights match no segment: PQ 0 over the 5 classes, as panopticapi
            assert len(panoptic_images) == len(IMAGE_SIZES) and all(image[3] for image in panoptic_images)
            assert metrics["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 5}
            assert_equals_panopticapi(metrics, panoptic_images)
            panoptic_images.clear()
        else:
            assert 0 <= metrics["mIoU"] <= 1 and set(metrics["per_class"]) == {c["name"] for c in CATEGORIES}
    assert "wrote" in capsys.readouterr().out


def test_converted_keras_model_evaluates(dataset, tiny_model_files, tmp_path):
    """The golden checkpoint converted by tools/convert_detectron2_checkpoint (the conftest fixture)."""
    root, _ = dataset
    output = tmp_path / "metrics.json"
    test_map.main(
        ["--model", str(tiny_model_files / "tiny.keras"), "--set", "data.min_size_test=64", "data.max_size_test=128",
         EAGER, "--tfrecords", str(root / "both" / "val-*.tfrecord"), "--output", str(output)]
    )  # fmt: skip
    assert set(json.loads(output.read_text())) == {"segm", "bbox"}


def test_bad_model_inputs_give_one_line_errors(dataset, tmp_path):
    root, _ = dataset
    data = ["--tfrecords", str(root / "both" / "val-*.tfrecord")]
    with pytest.raises(SystemExit, match=r"nope\.pkl does not exist"):
        test_map.main(["--weights", str(tmp_path / "nope.pkl"), *data])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SystemExit, match=r"notes\.txt is neither a detectron2 \.pkl nor a Keras"):
        test_map.main(["--weights", str(tmp_path / "notes.txt"), *data])
    with pytest.raises(SystemExit, match=r"notes\.txt is not a saved \.keras model"):
        test_map.main(["--model", str(tmp_path / "notes.txt"), *data])
    # the golden checkpoint has 5 classes and a tiny architecture; the default preset has 80 classes
    with pytest.raises(SystemExit, match=r"tiny_detectron2\.pkl has num_classes=5, .* --set model\.num_classes=5"):
        test_map.main(["--weights", GOLDEN_PKL, *data])
    with pytest.raises(SystemExit, match="needs the image folder as --images"):
        test_map.main(["--weights", GOLDEN_PKL, "--gt", str(root / "panoptic.json")])
    config_file = tmp_path / "tiny.json"
    small_config("instance").save(str(config_file))
    with pytest.raises(SystemExit, match="panoptic JSON; instance AP needs the COCO instances JSON"):
        test_map.main(["--weights", GOLDEN_PKL, "--config", str(config_file),
                       "--gt", str(root / "panoptic.json"), "--images", str(root / "images")])  # fmt: skip
    with pytest.raises(SystemExit, match="no TFRecord files match"):
        test_map.main(["--weights", GOLDEN_PKL, "--config", str(config_file), "--tfrecords", str(tmp_path / "x-*")])


def test_categories_of_the_records_must_match_the_model(dataset, tmp_path):
    root, _ = dataset
    config = small_config("instance")
    config.model.num_classes = 4
    with pytest.raises(ValueError, match="lists 5 categories but model.num_classes is 4"):
        tfrecord_eval_set(config, str(root / "both" / "val-*.tfrecord"), "instance")
    with pytest.raises(ValueError, match="lists 5 categories but the model predicts 4"):
        coco_json_eval_set(config, str(root / "instances.json"), str(root / "images"), "instance")
    assert Categories.load(str(root / "both" / "categories.json")).num_classes == 5


def test_a_truncated_image_is_evaluated_with_one_warning_naming_it(dataset, tmp_path, capsys, load_once):
    """test_map.py on a folder with a truncated JPEG: one `warning:` line naming the file, the metrics
    still written, exit 0 (the grey part is evaluated as read, as test.py draws it)."""
    import shutil

    import cli

    root, _ = dataset
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    Image.open(images / "im2.png").convert("RGB").save(images / "im2.jpg", quality=95)
    whole = (images / "im2.jpg").read_bytes()
    (images / "im2.jpg").write_bytes(whole[: len(whole) // 2])
    gt = json.loads((root / "instances.json").read_text())
    gt["images"][2]["file_name"] = "im2.jpg"
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    config_file = tmp_path / "tiny.json"
    small_config("instance").save(str(config_file))
    output = tmp_path / "metrics.json"
    argv = ["--weights", GOLDEN_PKL, "--config", str(config_file), "--gt", str(tmp_path / "gt.json")]
    assert cli.run(test_map.main, [*argv, "--images", str(images), "--output", str(output), "--set", EAGER]) == 0
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith(f"warning: {images / 'im2.jpg'} is truncated"), err
    assert set(json.loads(output.read_text())) == {"segm", "bbox"}

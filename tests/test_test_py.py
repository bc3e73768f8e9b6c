"""test.py: images of several sizes and modes through a hand-built model honouring the model contract;
overlays at the original size, JSON that pycocotools reads back (and scores AP 1 against itself)."""

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import test as test_program
from config import Mask2FormerConfig
from data.categories import Categories
from evaluation.inference import Predictor, read_image, resized_shape

CATEGORIES = Categories.from_coco(
    [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "sky", "isthing": 0}]
)


class HandBuiltModel:
    """Returns the model contract: pred_logits (B, 4, K+1), pred_masks (B, 4, Hp/4, Wp/4) with Hp, Wp
    the input rounded up to 32; query q is confident about class q % K and covers a horizontal band."""

    def __call__(self, images, training=False):
        batch, height, width, _ = images.shape
        padded_h, padded_w = -(-height // 32) * 32, -(-width // 32) * 32
        num_queries, num_classes = 4, 3
        logits = np.full((batch, num_queries, num_classes + 1), -4.0, np.float32)
        logits[:, np.arange(num_queries), np.arange(num_queries) % num_classes] = 6.0
        masks = np.full((batch, num_queries, padded_h // 4, padded_w // 4), -8.0, np.float32)
        band = max(1, height // 4 // num_queries)
        for q in range(num_queries):
            masks[:, q, q * band : (q + 1) * band, : width // 4 - q] = 8.0
        return {"pred_logits": logits, "pred_masks": masks}


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), np.uint8)).save(folder / "rgb.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 20), np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (50, 50, 4), np.uint8), "RGBA").save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rng.integers(0, 255, (20, 40, 3), np.uint8)).save(folder / "rotated.jpg", exif=exif)
    return folder


def small_config(task):
    config = Mask2FormerConfig()
    config.model.num_classes = 3
    config.data.min_size_test, config.data.max_size_test = 64, 128
    config.inference.task = task
    return config.validate()


def test_read_image_modes_and_errors(image_folder, tmp_path):
    assert read_image(image_folder / "gray.png").shape == (64, 20, 3)
    assert read_image(image_folder / "rgba.png").shape == (50, 50, 3)
    assert read_image(image_folder / "rotated.jpg").shape == (40, 20, 3)  # EXIF orientation applied
    (tmp_path / "broken.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        read_image(tmp_path / "broken.jpg")


def test_resized_shape_is_detectron2s():
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)  # long side capped
    assert resized_shape(640, 480, 800, 1333) == (1067, 800)


@pytest.mark.parametrize("task", ["instance", "panoptic", "semantic"])
def test_writes_overlays_and_json_for_every_image(image_folder, tmp_path, task):
    config = small_config(task)
    predictor = Predictor(HandBuiltModel(), config, isthing=CATEGORIES.isthing)
    paths = test_program.list_images(str(image_folder))
    output = tmp_path / "res"
    with contextlib.redirect_stdout(io.StringIO()):
        test_program.run(predictor, paths, str(output), CATEGORIES, score_threshold=0.5, batch_size=3)
    for path in paths:
        stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        height, width = read_image(path).shape[:2]
        overlay = cv2.imread(str(output / f"{stem}.png"))
        record = json.loads((output / f"{stem}.json").read_text())
        assert (record["height"], record["width"], record["task"]) == (height, width, task)
        if task == "semantic":  # legend panel on the right
            assert overlay.shape[0] >= height and overlay.shape[1] > width
        else:
            assert overlay.shape[:2] == (height, width)
        assert record["instances"], f"{stem}: nothing predicted"
        for entry in record["instances"]:
            mask = mask_utils.decode({"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"]})
            assert mask.shape == (height, width) and mask.sum() == entry["area"] > 0
            assert entry["category_id"] in CATEGORIES.ids and entry["category_name"] in CATEGORIES.names
            x, y, w, h = entry["bbox"]
            ys, xs = np.nonzero(mask)
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_instance_json_round_trips_through_pycocotools(image_folder, tmp_path):
    """The written entries are a valid COCO results list: as ground truth and as results, AP = 1."""
    predictor = Predictor(HandBuiltModel(), small_config("instance"), isthing=CATEGORIES.isthing)
    paths = test_program.list_images(str(image_folder))
    with contextlib.redirect_stdout(io.StringIO()):
        test_program.run(predictor, paths, str(tmp_path), CATEGORIES, score_threshold=0.0, batch_size=2)
    images, annotations, results = [], [], []
    for image_id, path in enumerate(paths, start=1):
        record = json.loads((tmp_path / (path.rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".json")).read_text())
        images.append({"id": image_id, "height": record["height"], "width": record["width"]})
        for entry in record["instances"]:
            results.append({**entry, "image_id": image_id})
            annotations.append({**entry, "image_id": image_id, "id": len(annotations) + 1, "iscrowd": 0})
    gt = {"images": images, "annotations": annotations, "categories": [{"id": i} for i in CATEGORIES.ids]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_command_line_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        test_program.main(["--model", "m.keras", "--images", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="holds no images"):
        test_program.main(["--model", "m.keras", "--images", str(tmp_path)])

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
from inference.predictor import Predictor, read_image, resized_shape

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


# ------------------------------------------------------------------------ the real (tiny) model
GOLDEN_PKL = "tests/golden/tiny_detectron2.pkl"


@pytest.fixture(scope="module")
def tiny_model_files(tmp_path_factory):
    """The golden tiny checkpoint as .pkl, as a converted .keras model, as .weights.h5; plus its config."""
    from model import build_model
    from model.checkpoint import load_detectron2_checkpoint
    from tests.helpers import tiny_config
    from tools.convert_detectron2_checkpoint import convert

    folder = tmp_path_factory.mktemp("tiny_model")
    config = tiny_config()
    config.data.min_size_test, config.data.max_size_test = 64, 128
    config.save(str(folder / "tiny.json"))
    convert(GOLDEN_PKL, str(folder / "tiny.keras"), num_heads=config.model.num_heads)
    network = build_model(config)
    load_detectron2_checkpoint(network, GOLDEN_PKL)
    network.save_weights(str(folder / "tiny.weights.h5"))
    return folder


@pytest.mark.parametrize("task", ["instance", "panoptic", "semantic"])
def test_real_tiny_model_from_every_kind_of_file(image_folder, tiny_model_files, tmp_path, task):
    """.keras, detectron2 .pkl and .weights.h5 of the same weights write the same JSON for every image
    (RGB JPEG, grayscale, RGBA, EXIF-rotated; none a multiple of 32), at the original size, readable
    by pycocotools as results."""
    folder = tiny_model_files
    sizes = ["--set", "data.min_size_test=64", "data.max_size_test=128", f"inference.task={task}"]
    if task == "panoptic":  # random weights are never 0.8 sure of a class: keep every query
        sizes += ["inference.object_mask_threshold=0", "inference.overlap_threshold=0"]
    runs = {
        "keras": ["--model", str(folder / "tiny.keras"), *sizes],
        "pkl": ["--weights", GOLDEN_PKL, "--config", str(folder / "tiny.json"), *sizes],
        "h5": ["--weights", str(folder / "tiny.weights.h5"), "--config", str(folder / "tiny.json"), *sizes],
    }
    written = {}
    for name, args in runs.items():
        output = tmp_path / name
        with contextlib.redirect_stdout(io.StringIO()):
            test_program.main([*args, "--images", str(image_folder), "--output", str(output),
                               "--score-threshold", "0", "--batch-size", "2"])  # fmt: skip
        written[name] = {p.name: json.loads(p.read_text()) for p in sorted(output.glob("*.json"))}
        assert len(list(output.glob("*.png"))) == 4
    assert written["keras"] == written["pkl"] == written["h5"]
    images, results = [], []
    for image_id, (file_name, record) in enumerate(written["pkl"].items(), start=1):
        height, width = read_image(str(image_folder / record["file_name"])).shape[:2]
        assert (record["height"], record["width"]) == (height, width), file_name
        images.append({"id": image_id, "height": height, "width": width})
        for entry in record["instances"]:
            mask = mask_utils.decode(entry["segmentation"] | {"counts": entry["segmentation"]["counts"].encode()})
            assert mask.shape == (height, width) and mask.sum() == entry["area"]
            results.append({**entry, "image_id": image_id, "score": entry.get("score", 1.0)})
    assert results, "the tiny model predicted nothing at all"
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": [], "categories": [{"id": k} for k in range(5)]}
        coco.createIndex()
        loaded = coco.loadRes(results)
    assert len(loaded.anns) == len(results)


def test_model_file_errors_are_one_line(image_folder, tiny_model_files, tmp_path):
    folder, images = tiny_model_files, ["--images", str(image_folder)]
    with pytest.raises(SystemExit, match=r"missing\.keras does not exist"):
        test_program.main(["--model", str(tmp_path / "missing.keras"), *images])
    with pytest.raises(SystemExit, match=r"tiny\.weights\.h5 is not a saved \.keras model; pass it with --weights"):
        test_program.main(["--model", str(folder / "tiny.weights.h5"), *images])
    with pytest.raises(SystemExit, match=r"predict 5 classes but model\.num_classes is 80; pass --set model\.num"):
        test_program.main(["--weights", str(folder / "tiny.weights.h5"), *images])
    with pytest.raises(SystemExit, match=r"has num_classes=5, .* but the config says 80, .*--set model\.num_classes=5"):
        test_program.main(["--weights", GOLDEN_PKL, *images])
    (tmp_path / "fake.pkl").write_bytes(b"not a pickle")
    with pytest.raises(SystemExit, match=r"fake\.pkl is not a readable detectron2 pickle"):
        test_program.main(["--weights", str(tmp_path / "fake.pkl"), *images])
    (tmp_path / "fake.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(SystemExit, match=r"fake\.weights\.h5 is not a readable Keras weights file"):
        test_program.main(["--weights", str(tmp_path / "fake.weights.h5"), *images])


def test_image_alone_equals_image_in_a_batch_with_a_larger_one(tiny_model_files, tmp_path):
    """The model's padding is not masked, so a batch is split by padded size: the small image's JSON
    is the same whether it runs alone or in one batch with a larger image (--batch-size 2)."""
    rng = np.random.default_rng(1)
    alone, together = tmp_path / "alone", tmp_path / "together"
    alone.mkdir(), together.mkdir()
    small = rng.integers(0, 255, (64, 80, 3), np.uint8)  # padded to 64 x 96
    Image.fromarray(small).save(alone / "a_small.png")
    Image.fromarray(small).save(together / "a_small.png")
    Image.fromarray(rng.integers(0, 255, (64, 120, 3), np.uint8)).save(together / "b_large.png")  # 64 x 128
    folder = tiny_model_files
    written = {}
    for name, images in (("alone", alone), ("together", together)):
        with contextlib.redirect_stdout(io.StringIO()):
            test_program.main(["--model", str(folder / "tiny.keras"), "--images", str(images),
                               "--output", str(tmp_path / f"out_{name}"), "--score-threshold", "0",
                               "--batch-size", "2", "--set", "data.min_size_test=64", "data.max_size_test=128"])  # fmt: skip
        written[name] = json.loads((tmp_path / f"out_{name}" / "a_small.json").read_text())["instances"]
    assert len(written["alone"]) == len(written["together"]) > 0
    for a, b in zip(written["alone"], written["together"], strict=True):
        assert a["segmentation"] == b["segmentation"] and a["category_id"] == b["category_id"]
        assert abs(a["score"] - b["score"]) <= 1e-5


@pytest.mark.parametrize("mode", ["function", "xla", "eager"])
def test_compiled_model_equals_the_model_and_compiles_once_per_shape(tiny_model_files, mode):
    import keras

    import model as _  # noqa: F401 - registers the layers
    from inference.predictor import CompiledModel

    network = keras.saving.load_model(str(tiny_model_files / "tiny.keras"))
    runner = CompiledModel(network, mode)
    rng = np.random.default_rng(2)
    for shape in [(1, 64, 96, 3), (2, 64, 96, 3), (1, 64, 96, 3), (1, 96, 64, 3)]:
        images = rng.uniform(0, 255, shape).astype(np.float32)
        expected = network(images, training=False)
        got = runner(images)
        for key in ("pred_logits", "pred_masks"):
            np.testing.assert_allclose(got[key], keras.ops.convert_to_numpy(expected[key]), atol=1e-4, rtol=1e-4)
    assert sorted(runner.compile_seconds) == [(1, 64, 96, 3), (1, 96, 64, 3), (2, 64, 96, 3)]

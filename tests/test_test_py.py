"""test.py: images of several sizes and modes through a hand-built model honouring the model contract;
overlays at the original size, JSON that pycocotools reads back (and scores AP 1 against itself)."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import cli
import test as test_program
from config import Mask2FormerConfig
from data.categories import Categories
from inference.predictor import Predictor, read_image, resized_shape

ROOT = Path(__file__).resolve().parents[1]
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


def _one_line(capsys, message: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert cli.run(test_program.main, ["--model", str(tmp_path / "m.keras"), "--images", str(tmp_path)]) == 2
    _one_line(capsys, "m.keras does not exist")
    (tmp_path / "m.keras").write_bytes(b"")
    assert cli.run(test_program.main, ["--model", str(tmp_path / "m.keras"), "--images", str(tmp_path)]) == 2
    _one_line(capsys, "m.keras is not a complete .keras file")
    assert cli.run(test_program.main, ["--weights", "w.pkl", "--images", str(tmp_path / "nope")]) == 2
    _one_line(capsys, "nope does not exist; pass an image folder or file")
    assert cli.run(test_program.main, ["--weights", "w.pkl", "--images", str(tmp_path)]) == 2
    _one_line(capsys, "holds no images")


# ------------------------------------------------------------------------ the real (tiny) model
# The golden tiny checkpoint; `tiny_model_files` (tests/conftest.py) holds it as .keras and .weights.h5.
# In-process runs keep the model uncompiled: tracing it once per padded shape is most of a run's time on a
# CPU. The compiled modes are compared with the model in test_compiled_model_equals_the_model_..., and the
# default mode runs end to end in test_the_command_line_in_a_fresh_process.
GOLDEN_PKL = "tests/golden/tiny_detectron2.pkl"
EAGER = "inference.compile=eager"


def test_the_command_line_in_a_fresh_process(tiny_model_files, tmp_path):
    """`python test.py` as a user runs it (default compile mode): exit 0, nothing on stderr (TensorFlow's
    start-up lines silenced, no traceback), the overlay and JSON written, the count as the last line."""
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 56, 3), np.uint8)).save(tmp_path / "one.png")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    argv = ["--model", str(tiny_model_files / "tiny.keras"), "--images", str(tmp_path / "one.png"),
            "--output", str(tmp_path / "out"), "--set", "data.min_size_test=64", "data.max_size_test=128"]  # fmt: skip
    done = subprocess.run([sys.executable, "test.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == f"1 images written to {tmp_path / 'out'}, 0 skipped"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one.json", "one.png"]
    assert json.loads((tmp_path / "out" / "one.json").read_text())["height"] == 40


@pytest.mark.parametrize("task", ["instance", "panoptic", "semantic"])
def test_real_tiny_model_from_every_kind_of_file(image_folder, tiny_model_files, tmp_path, task):
    """.keras, detectron2 .pkl and .weights.h5 of the same weights write the same JSON for every image
    (RGB JPEG, grayscale, RGBA, EXIF-rotated; none a multiple of 32); each task's JSON is at the original
    size and readable by pycocotools as results."""
    folder = tiny_model_files
    sizes = ["--set", "data.min_size_test=64", "data.max_size_test=128", f"inference.task={task}", EAGER]
    if task == "panoptic":  # random weights are never 0.8 sure of a class: keep every query
        sizes += ["inference.object_mask_threshold=0", "inference.overlap_threshold=0"]
    runs = {
        "keras": ["--model", str(folder / "tiny.keras"), *sizes],
        "pkl": ["--weights", GOLDEN_PKL, "--config", str(folder / "tiny.json"), *sizes],
        "h5": ["--weights", str(folder / "tiny.weights.h5"), "--config", str(folder / "tiny.json"), *sizes],
    }
    if task != "instance":  # the loaders do not depend on the task: compared once, on instance
        runs = {"pkl": runs["pkl"]}
    written = {}
    for name, args in runs.items():
        output = tmp_path / name
        with contextlib.redirect_stdout(io.StringIO()):
            test_program.main([*args, "--images", str(image_folder), "--output", str(output),
                               "--score-threshold", "0", "--batch-size", "2"])  # fmt: skip
        written[name] = {p.name: json.loads(p.read_text()) for p in sorted(output.glob("*.json"))}
        assert len(list(output.glob("*.png"))) == 4
    assert all(files == written["pkl"] for files in written.values())
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


def test_model_file_errors_are_one_line(image_folder, tiny_model_files, tmp_path, capsys):
    """Each misleading message of before: a truncated .keras ("file not found"), weights of another model
    (a --set hint that leads on to "289 objects could not be loaded"), a folder ("does not exist")."""
    folder, images = tiny_model_files, ["--images", str(image_folder), "--output", str(tmp_path / "out")]
    cases = [
        (["--model", str(tmp_path / "missing.keras")], r"missing.keras does not exist"),
        (["--model", str(folder / "tiny.weights.h5")], "tiny.weights.h5 is not a saved .keras model; pass it with --weights"),
        (["--weights", str(folder / "tiny.weights.h5")], "predict 5 classes but model.num_classes is 80: they belong to another model"),
        (["--weights", GOLDEN_PKL], "--set model.num_classes=5"),
        (["--weights", str(tmp_path / "fake.pkl")], "fake.pkl is not a readable detectron2 pickle"),
        (["--weights", str(tmp_path / "fake.weights.h5")], "fake.weights.h5 is not a readable Keras weights file"),
        (["--model", str(tmp_path / "truncated.keras")], "truncated.keras is not a complete .keras file"),
        (["--model", str(tmp_path)], f"--model {tmp_path} is a folder, not a file"),
        (["--weights", str(tmp_path)], f"--weights {tmp_path} is a folder, not a file"),
    ]  # fmt: skip
    (tmp_path / "fake.pkl").write_bytes(b"not a pickle")
    (tmp_path / "fake.weights.h5").write_bytes(b"not hdf5")
    whole = (folder / "tiny.keras").read_bytes()
    (tmp_path / "truncated.keras").write_bytes(whole[: len(whole) // 2])
    for argv, message in cases:
        assert cli.run(test_program.main, [*argv, *images]) == 2, argv
        _one_line(capsys, message)
        assert not (tmp_path / "out").exists()
    run = tmp_path / "run"  # as in a run folder: weights beside their config.json
    run.mkdir()
    shutil.copy(folder / "tiny.weights.h5", run / "tiny.weights.h5")
    shutil.copy(folder / "tiny.json", run / "config.json")
    assert cli.run(test_program.main, ["--weights", str(run / "tiny.weights.h5"), *images]) == 2
    _one_line(capsys, f"(--config {run / 'config.json'})")


def test_unreadable_images_are_skipped_and_truncated_ones_named(image_folder, tiny_model_files, tmp_path, capsys):
    """A folder with an unreadable and a truncated image: the others are written, one line each, exit 1."""
    (image_folder / "broken.png").write_bytes(b"not an image")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8)).save(image_folder / "cut.jpg")
    data = (image_folder / "cut.jpg").read_bytes()
    (image_folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    output = tmp_path / "out"
    argv = ["--weights", str(tiny_model_files / "tiny.weights.h5"), "--config", str(tiny_model_files / "tiny.json")]
    argv += ["--images", str(image_folder), "--output", str(output), "--batch_size", "2", "--set", EAGER]
    assert cli.run(test_program.main, argv) == 1
    out, err = capsys.readouterr()
    assert f"skipped {image_folder / 'broken.png'}: cannot read image" in err
    assert f"warning: {image_folder / 'cut.jpg'} is truncated" in err
    assert [line for line in err.splitlines() if "broken.png" in line or "cut.jpg" in line and "warning" in line]
    assert len([line for line in err.splitlines() if line.startswith(("skipped", "warning"))]) == 2, err
    assert out.strip().splitlines()[-1] == f"5 images written to {output}, 1 skipped (see above)"
    assert sorted(p.name for p in output.iterdir()) == sorted(
        f"{stem}.{ext}" for stem in ("rgb", "gray", "rgba", "rotated", "cut") for ext in ("png", "json")
    )


def test_a_saved_model_carries_its_inference_settings(image_folder, tiny_model_files, tmp_path):
    """--model of a .keras written by save_model predicts exactly as --config + --weights do, with no --set
    but the compile mode (test-time sizes, task, thresholds, class names come from the file); plain
    model.save does not."""
    import keras

    from inference.loading import model_settings, save_model

    folder = tiny_model_files
    config = Mask2FormerConfig.load(str(folder / "tiny.json"))
    config.inference.task, config.inference.score_threshold = "instance", 0.0
    config.save(str(tmp_path / "run.json"))
    names = Categories.from_coco([{"id": 10 + k, "name": f"shape {k}"} for k in range(5)])
    names.save(str(tmp_path / "categories.json"))
    network = keras.saving.load_model(str(folder / "tiny.keras"))
    save_model(network, str(tmp_path / "with_settings.keras"), config, names)
    network.save(str(tmp_path / "plain.keras"))
    assert model_settings(str(tmp_path / "with_settings.keras"))["config"]["data.min_size_test"] == 64
    runs = {
        "with_settings": ["--model", str(tmp_path / "with_settings.keras")],
        "plain": ["--model", str(tmp_path / "plain.keras")],  # one image: at 800 / 1333 it is the slow run
        "weights": ["--weights", GOLDEN_PKL, "--config", str(tmp_path / "run.json"),
                    "--categories", str(tmp_path / "categories.json")],
    }  # fmt: skip
    written = {}
    for name, argv in runs.items():
        with contextlib.redirect_stdout(io.StringIO()):
            assert (
                cli.run(
                    test_program.main,
                    [
                        *argv,
                        "--images",
                        str(image_folder / "rgb.jpg" if name == "plain" else image_folder),
                        "--output",
                        str(tmp_path / name),
                        "--set",
                        EAGER,
                    ],  # fmt: skip
                )
                == 0
            )
        written[name] = {p.name: json.loads(p.read_text()) for p in sorted((tmp_path / name).glob("*.json"))}
    assert written["with_settings"] == written["weights"]
    assert written["plain"]["rgb.json"] != written["weights"]["rgb.json"]  # 800 / 1333 of the default preset
    assert any(entry["category_name"] == "shape 0" or entry["category_name"].startswith("shape")
               for record in written["with_settings"].values() for entry in record["instances"])  # fmt: skip


@pytest.mark.slow
def test_a_12_megapixel_photo_stays_under_3_gb():
    """test.py (fresh process) on 4000 x 3000 with the 80-class, 100-query R50 model: peak RSS < 3 GB."""
    from bench import memory_12mp

    assert memory_12mp.main(["--score_threshold", "0.5"]) < 3.0


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
                               "--batch-size", "2", "--set", "data.min_size_test=64", "data.max_size_test=128", EAGER])  # fmt: skip
        written[name] = json.loads((tmp_path / f"out_{name}" / "a_small.json").read_text())["instances"]
    assert len(written["alone"]) == len(written["together"]) > 0
    for a, b in zip(written["alone"], written["together"], strict=True):
        assert a["segmentation"] == b["segmentation"] and a["category_id"] == b["category_id"]
        assert abs(a["score"] - b["score"]) <= 1e-5


@pytest.fixture(scope="module")
def tiny_network(tiny_model_files):
    """The golden tiny `.keras` model, loaded once for the tests that only call it."""
    import keras

    import model as _  # noqa: F401 - registers the layers

    return keras.saving.load_model(str(tiny_model_files / "tiny.keras"))


@pytest.mark.parametrize("mode", ["function", "xla", "eager"])
def test_compiled_model_equals_the_model_and_compiles_once_per_shape(tiny_network, mode):
    """Every mode equals the model; the cache by shape (the same code for every mode) is checked on three
    shapes in graph mode, on one shape called twice under XLA (each XLA compile takes long on a CPU) and
    eagerly (each eager call of the model takes seconds on a CPU)."""
    import keras

    from inference.predictor import CompiledModel

    network = tiny_network
    runner = CompiledModel(network, mode)
    rng = np.random.default_rng(2)
    shapes = [(1, 64, 96, 3), (2, 64, 96, 3), (1, 64, 96, 3), (1, 96, 64, 3)]
    if mode in ("xla", "eager"):
        shapes = [(1, 64, 96, 3), (1, 64, 96, 3)]
    for shape in shapes:
        images = rng.uniform(0, 255, shape).astype(np.float32)
        expected = network(images, training=False)
        got = runner(images)
        for key in ("pred_logits", "pred_masks"):
            np.testing.assert_allclose(got[key], keras.ops.convert_to_numpy(expected[key]), atol=1e-4, rtol=1e-4)
    assert sorted(runner.compile_seconds) == sorted(set(shapes))


def test_following_the_architecture_hint_loads_the_checkpoint(image_folder, tmp_path, capsys):
    """Weights of another architecture: the one-line error's `--set ...`, followed as printed (plus the
    heads x points product it names), runs to the end instead of leading to another error."""
    images = ["--images", str(image_folder), "--output", str(tmp_path / "out")]
    assert cli.run(test_program.main, ["--weights", GOLDEN_PKL, *images]) == 2
    line = capsys.readouterr().err.strip()
    assert line.splitlines() == [line] and "; pass --set " in line, line
    hint = line.split("; pass --set ", 1)[1].removesuffix(" model.num_heads / model.deformable_points to match")
    assert "model.num_classes=5" in hint and "model.num_queries=7" in hint, hint
    with contextlib.redirect_stdout(io.StringIO()):
        sizes = ["data.min_size_test=64", "data.max_size_test=128", "inference.compile=eager"]
        argv = ["--weights", GOLDEN_PKL, "--set", *hint.split(), "model.num_heads=4", *sizes, *images]
        assert cli.run(test_program.main, argv) == 0
    assert capsys.readouterr().err == ""
    assert len(list((tmp_path / "out").glob("*.json"))) == 4


def test_result_json_encoded_a_few_masks_at_a_time_equals_the_masks_themselves():
    """result_to_json boxes and encodes `chunk` masks at a time: any chunk gives the same JSON, and each
    entry decodes to its mask with that mask's box and area (instance, panoptic, semantic)."""
    from inference.postprocess import InstanceResult, PanopticResult, SemanticResult
    from inference.results_json import result_to_json

    rng = np.random.default_rng(3)
    height, width, n = 30, 40, 11
    masks = rng.random((n, height, width)) < rng.random((n, 1, 1)) * 0.3
    masks[4] = False  # an empty mask is never written
    scores = rng.random(n).astype(np.float32)
    labels = rng.integers(0, 5, n)
    instance = InstanceResult(masks, scores, labels, np.arange(n), np.zeros((n, 4), np.float32))
    segment_ids = rng.integers(0, 7, (height, width)).astype(np.int32)
    segments = [{"id": k, "category": k % 5, "isthing": k % 2 == 0, "score": 0.5} for k in range(1, 7)]
    results = [instance, PanopticResult(segment_ids, segments), SemanticResult(segment_ids % 5)]
    ids, names = [10, 11, 12, 13, 14], ["a", "b", "c", "d", "e"]
    for result in results:
        whole = result_to_json(result, "x.jpg", ids, names, 0.3, chunk=1000)
        assert whole["instances"], type(result).__name__
        for chunk in (1, 3):
            assert result_to_json(result, "x.jpg", ids, names, 0.3, chunk=chunk) == whole
        for entry in whole["instances"]:
            mask = mask_utils.decode({**entry["segmentation"], "counts": entry["segmentation"]["counts"].encode()})
            ys, xs = np.nonzero(mask)
            assert entry["area"] == len(ys) > 0
            assert entry["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    kept = [k for k in range(n) if scores[k] >= 0.3 and masks[k].any()]
    written = result_to_json(instance, "x.jpg", ids, names, 0.3, chunk=3)["instances"]
    assert [e["category_id"] for e in written] == [ids[labels[k]] for k in kept]
    for entry, k in zip(written, kept, strict=True):
        decoded = mask_utils.decode({**entry["segmentation"], "counts": entry["segmentation"]["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), masks[k])

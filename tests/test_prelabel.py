"""Pre-labelling: predictions written as CVAT XML, labelme files, overlays and per-image JSON; read back by
our readers (and by labelme's own); an existing task kept; killed halfway, the rerun finishes the rest; and,
slow, the whole loop (labelme files -> convert -> fine-tune -> pre-label held-out images) measured by mask AP."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import cli
import prelabel as prelabel_program
from config import Mask2FormerConfig
from data.categories import Categories
from data.cvat import read_cvat_xml
from data.labelme import mask_to_polygons, read_labelme_dir
from data.synthetic import CATEGORIES, THING_CLASSES, SyntheticSpec, make_scene
from inference.predictor import Predictor
from inference.prelabel import PrelabelError, PrelabelOptions, prelabel

ROOT = Path(__file__).resolve().parents[1]
THINGS = Categories.from_coco([c for c in CATEGORIES if c["isthing"]])


class BandModel:
    """The model contract: query q is sure of class q % 4 and covers a band of rows (4 queries)."""

    def __call__(self, images, training=False):
        batch, height, width, _ = images.shape
        padded_h, padded_w = -(-height // 32) * 32, -(-width // 32) * 32
        logits = np.full((batch, 4, 5), -4.0, np.float32)
        logits[:, np.arange(4), np.arange(4)] = 6.0
        masks = np.full((batch, 4, padded_h // 4, padded_w // 4), -8.0, np.float32)
        band = height // 4 // 4
        for q in range(4):
            masks[:, q, q * band : (q + 1) * band, 2 : width // 4 - 2 - q] = 8.0
        return {"pred_logits": logits, "pred_masks": masks}


def _band_predictor():
    config = Mask2FormerConfig()
    config.model.num_classes = 4
    config.data.min_size_test, config.data.max_size_test = 64, 128
    config.inference.task = "instance"
    return Predictor(BandModel(), config.validate(), isthing=THINGS.isthing)


def _images(folder: Path, count: int, size=(64, 80)) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*size, 3), np.uint8)).save(folder / "images" / f"im{i}.png")


def _predicted_masks(folder: Path, stem: str) -> list[tuple[str, np.ndarray]]:
    record = json.loads((folder / "predictions" / f"{stem}.json").read_text())
    return [(e["label"], mask_utils.decode(e["segmentation"] | {"counts": e["segmentation"]["counts"].encode()}))
            for e in record["instances"]]  # fmt: skip


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_outputs_read_back_as_labelme_and_cvat(tmp_path):
    folder = tmp_path / "task"
    _images(folder, 3)
    stats = prelabel(_band_predictor(), THINGS, PrelabelOptions(str(folder), batch_size=2), log=lambda _: None)
    assert (stats.predicted, stats.resumed, stats.kept, stats.instances) == (3, 0, 0, 12)
    for sub, suffix in (("visuals", ".png"), ("predictions", ".json"), ("images", ".json")):
        assert sorted(p.stem for p in (folder / sub).glob(f"*{suffix}")) == ["im0", "im1", "im2"], sub
    assert not list(folder.rglob("*.tmp*"))

    from labelme import LabelFile  # labelme's own reader accepts our files (keys, types, image size)

    loaded = LabelFile(str(folder / "images" / "im0.json"))
    assert sorted(s["label"] for s in loaded.shapes) == ["circle", "rectangle", "star", "triangle"]

    labelme = read_labelme_dir(str(folder / "images"))
    xml = read_cvat_xml(str(folder / "annotations.xml"), str(folder / "images"))
    for source in (labelme, xml):
        names = {c["id"]: c["name"] for c in source.coco["categories"]}
        for image in source.coco["images"]:
            predicted = _predicted_masks(folder, Path(image["file_name"]).stem)
            anns = [a for a in source.coco["annotations"] if a["image_id"] == image["id"]]
            assert [names[a["category_id"]] for a in anns] == [label for label, _ in predicted]
            for ann, (_, mask) in zip(anns, predicted, strict=True):
                assert _iou(mask_utils.decode(ann["segmentation"]).astype(bool), mask.astype(bool)) >= 0.95


def test_existing_task_label_map_and_resume(tmp_path):
    """An existing annotations.xml keeps its <meta> and labelled images; a labelme-labelled image is kept;
    the label map renames and drops classes; a rerun redoes nothing."""
    folder = tmp_path / "task"
    _images(folder, 4)
    existing = """<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version><meta><task><id>7</id><name>barriers</name><labels>
<label><name>round</name><attributes></attributes></label></labels></task><dumped>2025</dumped></meta>
<image id="0" name="im0.png" width="80" height="64"><box label="round" occluded="0" xtl="1" ytl="1" xbr="9" ybr="9" z_order="0"/></image>
<image id="1" name="im1.png" width="80" height="64"></image>
</annotations>"""
    (folder / "annotations.xml").write_text(existing)
    by_hand = {"version": "5.5.0", "flags": {}, "imagePath": "im3.png", "imageData": None, "imageHeight": 64,
               "imageWidth": 80, "shapes": [{"label": "round", "points": [[1, 1], [8, 8]], "group_id": None,
                                             "shape_type": "rectangle", "flags": {}, "description": ""}]}  # fmt: skip
    (folder / "images" / "im3.json").write_text(json.dumps(by_hand))
    options = PrelabelOptions(str(folder), label_map={"circle": "round", "star": ""})
    stats = prelabel(_band_predictor(), THINGS, options, log=lambda _: None)
    assert (stats.predicted, stats.kept, stats.instances) == (2, 2, 6)  # im1 and im2; 3 classes each

    root = ET.parse(folder / "annotations.xml").getroot()
    assert root.findtext("meta/task/name") == "barriers" and root.findtext("meta/dumped") == "2025"
    labels = [label.findtext("name") for label in root.iter("label")]
    assert labels == ["round", "rectangle", "triangle"]  # star dropped, circle renamed
    images = {image.get("name"): image for image in root.findall("image")}
    assert sorted(images) == ["im0.png", "im1.png", "im2.png"]
    assert [e.tag for e in images["im0.png"]] == ["box"]  # the labelled image, untouched
    assert images["im1.png"].get("id") == "1" and images["im2.png"].get("id") == "2"
    assert {e.get("label") for e in images["im1.png"]} == {"round", "rectangle", "triangle"}
    assert json.loads((folder / "images" / "im3.json").read_text()) == by_hand

    before = {p: p.stat().st_mtime_ns for p in (folder / "predictions").iterdir()}
    again = prelabel(_band_predictor(), THINGS, options, log=lambda _: None)
    assert (again.predicted, again.resumed, again.kept) == (0, 2, 2)
    assert {p: p.stat().st_mtime_ns for p in (folder / "predictions").iterdir()} == before
    assert ET.tostring(ET.parse(folder / "annotations.xml").getroot()) == ET.tostring(root)

    corrected = ET.parse(folder / "annotations.xml")  # an annotator deletes shapes of im1 in CVAT
    image = next(i for i in corrected.getroot().findall("image") if i.get("name") == "im1.png")
    for shape in list(image)[1:]:
        image.remove(shape)
    corrected.write(folder / "annotations.xml")
    prelabel(_band_predictor(), THINGS, options, log=lambda _: None)
    image = next(i for i in ET.parse(folder / "annotations.xml").getroot().iter("image") if i.get("name") == "im1.png")
    assert len(image) == 1  # corrections are never overwritten by predictions

    with pytest.raises(PrelabelError, match="not classes of the model"):
        prelabel(_band_predictor(), THINGS, PrelabelOptions(str(folder), label_map={"cat": "x"}))


def test_bad_input_is_one_line_and_status_2_an_unreadable_image_is_skipped_with_1(tmp_path, capsys, monkeypatch):
    """As on the command line (`cli.run`): each bad option, config, categories file, folder or annotations.xml
    is one line on stderr naming it and exit status 2, found before the model loads; a missing weights file
    too. An unreadable image beside a readable one: skipped in one line, the other pre-labelled, status 1."""
    (tmp_path / "categories.json").write_text(json.dumps({"categories": CATEGORIES[:4]}))
    _images(tmp_path / "task", 1)
    (tmp_path / "task" / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    for name, text in (
        ("dtd", '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotations>&x;</annotations>'),
        ("malformed", "<annotations><image"),
    ):  # fmt: skip
        _images(tmp_path / name, 1)
        (tmp_path / name / "annotations.xml").write_text(text)
    categories = ["--categories", str(tmp_path / "categories.json")]
    base = ["--weights", str(tmp_path / "none.weights.h5"), *categories, "--set", "model.num_classes=4"]
    task = ["--folder", str(tmp_path / "task")]
    cases = [
        ([*base, *task, "--label-map", "circle"], "--label-map 'circle' must look like 'model class=tool label'"),
        ([*base, *task, "--label-map", "hexagon=x"], "--label-map names ['hexagon'], not classes of the model"),
        ([*base, *task, "--batch-size", "0"], "--batch-size must be >= 1"),
        ([*base, "model.nope=1", *task], "unknown config key 'model.nope'"),
        ([*base, "model.num_classes=x", *task], "model.num_classes='x' is not a valid value"),
        ([*base, *task, "--config", str(tmp_path / "missing.json")], "missing.json does not exist"),
        (["--weights", "w", "--categories", str(tmp_path / "nope.json"), *task], "category file"),
        (["--weights", "w", *categories, *task], "lists 4 categories but model.num_classes is 80"),
        ([*base, "--folder", str(tmp_path / "missing")], "missing has no images/ folder; put the images"),
        ([*base, "--folder", str(tmp_path / "empty")], "images holds no images"),
        ([*base, "--folder", str(tmp_path / "dtd")], "annotations.xml refused: it declares a DTD"),
        ([*base, "--folder", str(tmp_path / "malformed")], "annotations.xml is not well-formed XML"),
    ]

    def no_model(*args):
        raise AssertionError("bad input is found before the model loads")

    monkeypatch.setattr("inference.loading.load_model", no_model)
    for argv, words in cases:
        assert cli.run(prelabel_program.main, argv) == cli.EXIT_BAD_INPUT, argv
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("error: ") and words in error[0], (argv, error)
    monkeypatch.undo()
    assert cli.run(prelabel_program.main, [*base, *task]) == cli.EXIT_BAD_INPUT
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "none.weights.h5 does not exist" in error[0], error

    monkeypatch.setattr("inference.loading.load_model", lambda *args: BandModel())
    small = [*base, "data.min_size_test=64", "data.max_size_test=128", *task]
    assert cli.run(prelabel_program.main, small) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"skipped: cannot read image {tmp_path / 'task' / 'images' / 'broken.jpg'}; it is missing, empty or not "
        "an image format OpenCV knows"
    ]
    assert "predicted 1 images (4 instances), 1 skipped (see above" in captured.out, captured.out
    assert sorted(p.name for p in (tmp_path / "task" / "predictions").iterdir()) == ["im0.json"]
    assert [im.get("name") for im in ET.parse(tmp_path / "task" / "annotations.xml").getroot().iter("image")] == [
        "im0.png"
    ]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A randomly initialised tiny 4-class model as .weights.h5 plus its config and categories."""
    from model import build_model
    from tests.helpers import tiny_config

    folder = tmp_path_factory.mktemp("tiny")
    config = tiny_config(num_classes=4)
    config.data.min_size_test, config.data.max_size_test = 64, 64
    config.save(str(folder / "config.json"))
    build_model(config).save_weights(str(folder / "model.weights.h5"))
    THINGS.save(str(folder / "categories.json"))
    return folder


@pytest.mark.slow
def test_killed_halfway_the_rerun_finishes_without_redoing(tmp_path, tiny_weights):
    """SIGKILL the command line after 3 of 12 images; the same command finishes the other 9 only."""
    folder = tmp_path / "task"
    _images(folder, 12, size=(48, 64))
    command = [sys.executable, str(ROOT / "prelabel.py"), "--weights", str(tiny_weights / "model.weights.h5"),
               "--config", str(tiny_weights / "config.json"), "--categories", str(tiny_weights / "categories.json"),
               "--folder", str(folder), "--score-threshold", "0.2"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    predictions = folder / "predictions"
    deadline = time.time() + 480  # start-up (TensorFlow, the model) takes long on a loaded machine
    try:
        while time.time() < deadline and process.poll() is None:
            if predictions.is_dir() and len(list(predictions.glob("*.json"))) >= 3:
                break
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)  # no-op when it already ended
        process.wait()
    done = {p.name: p.stat().st_mtime_ns for p in predictions.glob("*.json")}
    assert 3 <= len(done) < 12, f"{len(done)} images done when killed"
    for name in done:  # every finished image is whole: its labelme file and overlay exist
        json.loads((predictions / name).read_text())
        assert (folder / "images" / name).exists() and (folder / "visuals" / name.replace(".json", ".png")).exists()

    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert prelabel_program.main(command[2:]) == 0
    assert f"predicted {12 - len(done)} images" in out.getvalue() and f"{len(done)} done before" in out.getvalue()
    assert {n: (predictions / n).stat().st_mtime_ns for n in done} == done  # not redone
    assert len(list(predictions.glob("*.json"))) == 12 and not list(folder.rglob("*.tmp*"))
    assert len(ET.parse(folder / "annotations.xml").getroot().findall("image")) == 12


# ------------------------------------------------------------------------ the whole loop, measured
def write_labelme_split(folder: Path, spec: SyntheticSpec, split: str, count: int) -> list:
    """Synthetic scenes as labelme files, written by labelme's own LabelFile.save; returns the scenes."""
    from labelme import LabelFile

    folder.mkdir(parents=True, exist_ok=True)
    scenes = []
    for index in range(count):
        scene = make_scene(spec, split, index)
        Image.fromarray(scene.image).save(folder / f"{index:04d}.png")
        shapes = []
        for n, thing in enumerate(scene.things, 1):
            polygons = mask_to_polygons(thing.mask, tolerance=0)  # exact for labelme's rasteriser
            for polygon in polygons:
                shapes.append({"label": THING_CLASSES[thing.category_id - 1], "points": polygon.tolist(),
                               "group_id": n if len(polygons) > 1 else None, "description": "",
                               "shape_type": "polygon", "flags": {}, "mask": None})  # fmt: skip
        LabelFile().save(str(folder / f"{index:04d}.json"), shapes, f"{index:04d}.png", spec.height, spec.width)
        scenes.append(scene)
    return scenes


def mask_ap(truth_scenes, names: list[str], source, predictions: Path) -> float:
    """COCO mask AP of a read-back source against the scenes' things. The tools keep no score: each read-back
    instance takes the score of the prediction (predictions/<stem>.json) it overlaps most."""
    images = [{"id": i + 1, "height": s.image.shape[0], "width": s.image.shape[1]} for i, s in enumerate(truth_scenes)]
    truth = []
    for i, scene in enumerate(truth_scenes):
        for thing in scene.things:
            rle = mask_utils.encode(np.asfortranarray(thing.mask.astype(np.uint8)))
            truth.append({"id": len(truth) + 1, "image_id": i + 1, "category_id": thing.category_id, "iscrowd": 0,
                          "segmentation": rle, "area": float(thing.mask.sum()), "bbox": list(mask_utils.toBbox(rle))})  # fmt: skip
    source_names = {c["id"]: c["name"] for c in source.coco["categories"]}
    files = {im["id"]: Path(im["file_name"]).stem for im in source.coco["images"]}
    results = []
    for ann in source.coco["annotations"]:
        stem = files[ann["image_id"]]
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        scores = [e["score"] for e in json.loads((predictions / f"{stem}.json").read_text())["instances"]]
        overlaps = [_iou(mask, m.astype(bool)) for _, m in _predicted_masks(predictions.parent, stem)]
        score = scores[int(np.argmax(overlaps))]
        results.append({"image_id": int(stem) + 1, "category_id": names.index(source_names[ann["category_id"]]) + 1,
                        "segmentation": ann["segmentation"], "score": score})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": truth, "categories": [{"id": k + 1} for k in range(4)]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


@pytest.mark.slow
def test_labelme_to_fine_tuned_prelabels_mask_ap(tmp_path):
    import convert_coco_to_tfrecord
    from inference.loading import load_model
    from tests.helpers import tiny_config
    from training.loop import FINAL_WEIGHTS, train

    # Objects of radius 14 to 24 px: Mask2Former's masks come at 1/4 of the image, 16 x 16 here.
    spec = SyntheticSpec(seed=0, height=64, width=64, min_objects=1, max_objects=2, min_radius=0.22, max_radius=0.38,
                         image_format="png")  # fmt: skip
    write_labelme_split(tmp_path / "labelled", spec, "train", 48)
    held_out = write_labelme_split(tmp_path / "truth", spec, "val", 16)
    argv = ["--labelme_dir", str(tmp_path / "labelled"), "--output_file_prefix", str(tmp_path / "records" / "train")]
    assert convert_coco_to_tfrecord.main([*argv, "--num_shards=2", "--num_workers=1"]) == 0
    categories = Categories.load(str(tmp_path / "records" / "categories.json"))
    assert categories.names == tuple(sorted(THING_CLASSES))  # inferred from the files: sorted names

    config = tiny_config(num_classes=4, num_decoder_layers=3, encoder_layers=1)
    config.data.train_files = str(tmp_path / "records" / "train-*.tfrecord")
    config.data.categories_file = str(tmp_path / "records" / "categories.json")
    config.data.image_size, config.data.scale_range, config.data.horizontal_flip = (64, 64), (0.8, 1.25), True
    config.data.max_instances, config.data.min_size_test, config.data.max_size_test = 4, 64, 64
    config.loss.num_points = 256
    t = config.train
    t.batch_size, t.max_steps, t.learning_rate, t.mixed_precision = (
        4,
        int(os.environ.get("PRELABEL_STEPS", 1500)),
        1e-3,
        "float32",
    )
    t.backbone_weights, t.output_dir, t.checkpoint_every, t.log_every = "", str(tmp_path / "run"), 10_000, 50
    assert train(config.validate()).status == "finished"

    task = tmp_path / "task"
    (task / "images").mkdir(parents=True)
    for i in range(len(held_out)):
        os.link(tmp_path / "truth" / f"{i:04d}.png", task / "images" / f"{i:04d}.png")
    model = load_model(config, weights_path=str(tmp_path / "run" / FINAL_WEIGHTS))
    stats = prelabel(Predictor(model, config, isthing=categories.isthing), categories,
                     PrelabelOptions(str(task), batch_size=4), log=lambda _: None)  # fmt: skip
    assert stats.predicted == len(held_out)
    names = list(THING_CLASSES)
    ap_labelme = mask_ap(held_out, names, read_labelme_dir(str(task / "images")), task / "predictions")
    xml = read_cvat_xml(str(task / "annotations.xml"), str(task / "images"))
    ap_cvat = mask_ap(held_out, names, xml, task / "predictions")
    print(f"held-out mask AP of the pre-labels: read back as labelme {ap_labelme:.3f}, as CVAT {ap_cvat:.3f}")
    assert ap_labelme >= 0.5 and ap_cvat >= 0.5

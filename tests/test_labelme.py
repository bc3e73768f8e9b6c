"""labelme folders -> TFRecords: labelme's own examples against labelme's own conversions, every shape
type, images from imageData, bad shapes reported by file and shape, paths kept inside the folder."""

import base64
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED_TESTDATA
from PIL import Image
from pycocotools import mask as mask_utils

import convert_coco_to_tfrecord
from data.categories import Categories
from data.decoder import Decoder
from data.labelme import class_label_map, read_labelme_dir, read_labelme_file, read_labels_file

EXAMPLES = SHARED_TESTDATA / "labelme" / "examples"
INSTANCE = EXAMPLES / "instance_segmentation"
SEMANTIC = EXAMPLES / "semantic_segmentation"


def _require(path):
    if not path.exists():
        pytest.skip(f"external test data {path} is absent")


def _records(prefix: str, categories: Categories) -> dict:
    """file name -> decoded example of every shard PREFIX-*."""
    files = tf.io.gfile.glob(f"{prefix}-*.tfrecord")
    decoder = Decoder(categories, "objects")
    examples = {}
    for record in tf.data.TFRecordDataset(files):
        filename = tf.train.Example.FromString(record.numpy()).features.feature["image/filename"].bytes_list.value[0]
        examples[filename.decode()] = decoder(record)
    return examples


def test_instance_example_equals_labelme2coco(tmp_path):
    """Every instance of labelme's data_dataset_coco/annotations.json, with its category, labelme's area
    (labelme's rasteriser, exactly) and IoU >= 0.9 with pycocotools' decoding of its polygons."""
    _require(INSTANCE)
    prefix = str(tmp_path / "records" / "train")
    argv = ["--labelme_dir", str(INSTANCE / "data_annotated"), "--labels_file", str(INSTANCE / "labels.txt")]
    argv += ["--output_file_prefix", prefix, "--num_shards", "2", "--include_masks", "--num_workers", "1"]
    assert convert_coco_to_tfrecord.main(argv) == 0

    reference = json.loads((INSTANCE / "data_dataset_coco" / "annotations.json").read_text())
    categories = Categories.load(str(tmp_path / "records" / "categories.json"))
    # labelme2coco lists _background_ as category 0 (no annotation uses it); it is not a class here.
    expected = {(c["id"], c["name"]) for c in reference["categories"] if c["name"] != "_background_"}
    assert set(zip(categories.ids, categories.names, strict=True)) == expected

    examples = _records(prefix, categories)
    assert len(examples) == len(reference["images"]) == 3
    compared = []
    for image in reference["images"]:
        example = examples[os.path.basename(image["file_name"])]
        masks, classes = example["masks"].numpy().astype(bool), example["classes"].numpy()
        anns = [a for a in reference["annotations"] if a["image_id"] == image["id"]]
        assert len(masks) == len(anns)
        unmatched = list(range(len(masks)))
        for ann in anns:
            ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], *masks.shape[1:])))
            ref = ref.astype(bool)
            ious = [(masks[i] & ref).sum() / (masks[i] | ref).sum() for i in unmatched]
            best = unmatched.pop(int(np.argmax(ious)))
            assert categories.names[classes[best]] == categories.names[categories.index_of(ann["category_id"])]
            assert masks[best].sum() == ann["area"]
            assert max(ious) >= 0.9
            compared.append(max(ious))
    print(f"{len(compared)} instances, IoU with pycocotools' polygons: min {min(compared):.3f}")
    assert len(compared) == 12


def test_semantic_example_equals_labelme2voc_class_pngs(tmp_path):
    """Equal to labelme's own `shapes_to_label` (what labelme2voc.py runs) pixel for pixel, and to the
    class PNGs stored in labelme's repository except one edge pixel of 2011_000006 where a person and a
    sofa polygon meet: those PNGs were drawn by an older Pillow (today's labelme gives our value there)."""
    _require(SEMANTIC)
    from labelme.utils import shapes_to_label

    categories = read_labels_file(str(SEMANTIC / "labels.txt"))
    label_values = {"__ignore__": -1, "_background_": 0} | {c["name"]: c["id"] for c in categories}
    argv = ["--labelme_dir", str(SEMANTIC / "data_annotated"), "--labels_file", str(SEMANTIC / "labels.txt")]
    argv += ["--output_file_prefix", str(tmp_path / "records" / "train"), "--num_shards=1", "--num_workers=1"]
    assert convert_coco_to_tfrecord.main([*argv, "--labelme_class_pngs", str(tmp_path / "class")]) == 0
    differing = {}
    for json_path in sorted((SEMANTIC / "data_annotated").glob("*.json")):
        record = read_labelme_file(json_path, str(SEMANTIC / "data_annotated"))
        ours = class_label_map(record, categories)
        labelme_now, _ = shapes_to_label((record["height"], record["width"]), record["shapes"], label_values)
        np.testing.assert_array_equal(ours, np.where(labelme_now < 0, 255, labelme_now))  # lblsave: -1 -> 255
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "class" / f"{json_path.stem}.png")), ours)
        stored = np.asarray(Image.open(SEMANTIC / "data_dataset_voc" / "SegmentationClass" / f"{json_path.stem}.png"))
        differing[json_path.stem] = int((ours != stored).sum())
    print("pixels differing from labelme's stored class PNGs:", differing)
    assert differing == {"2011_000003": 0, "2011_000006": 1, "2011_000025": 0}


# ------------------------------------------------------------ hand-made labelme files
def _png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _shape(label, points, shape_type="polygon", group_id=None, **more):
    return {"label": label, "points": points, "group_id": group_id, "description": "", "shape_type": shape_type,
            "flags": {}, "mask": None, **more}  # fmt: skip


def _labelme_file(path, shapes, image_path, height=40, width=50, image_data=None):
    record = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": image_path,
              "imageData": image_data, "imageHeight": height, "imageWidth": width}  # fmt: skip
    path.write_text(json.dumps(record, indent=2))


def test_every_shape_type_groups_ignore_and_image_data(tmp_path):
    folder = tmp_path / "annotated"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(folder / "a.png")
    patch = np.zeros((6, 8), np.uint8)
    patch[1:5, 2:6] = 1
    shapes = [
        _shape("box", [[10, 5], [19, 14]], "rectangle"),
        _shape("disc", [[30, 20], [30, 25]], "circle"),
        _shape("blob", [[40, 30], [47, 35]], "mask", mask=_png_b64(patch * 255)),
        _shape("box", [[0, 30], [4, 30], [4, 34]], "polygon", group_id=7),
        _shape("box", [[6, 30], [9, 30], [9, 34]], "polygon", group_id=7),
        _shape("box", [[1, 1], [3, 3]], "line"),
        _shape("box", [[2, 2]], "point"),
        _shape("__ignore__", [[0, 0], [49, 0], [49, 3]], "polygon"),
        _shape("box", [[5, 5], [6, 6]], "polygon"),  # 2 points: malformed
    ]
    _labelme_file(folder / "a.json", shapes, "a.png")
    rgb = np.full((30, 20, 3), 200, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    _labelme_file(folder / "b.json", [_shape("disc", [[5, 5], [5, 8]], "circle")], "gone/b.png", 30, 20,
                  base64.b64encode(buffer.getvalue()).decode())  # fmt: skip

    source = read_labelme_dir(str(folder))
    assert [c["name"] for c in source.coco["categories"]] == ["blob", "box", "disc"]  # inferred, sorted
    assert source.notes == {"line shapes skipped (no area)": 1, "point shapes skipped (no area)": 1,
                            "__ignore__ regions left out (as labelme2coco does)": 1}  # fmt: skip
    assert len(source.problems) == 1
    assert "a.json, shape 8 ('box', polygon)" in str(source.problems[0]) and "fewer than 3" in str(source.problems[0])

    masks = {(a["image_id"], a["category_id"], a["bbox"][0]): mask_utils.decode(a["segmentation"]).astype(bool)
             for a in source.coco["annotations"]}  # fmt: skip
    box = masks[(1, 2, 10.0)]
    assert box.sum() == 100 and box[5:15, 10:20].all()  # PIL fills the rectangle and its outline
    blob = masks[(1, 1, 42.0)]
    np.testing.assert_array_equal(blob[30:36, 40:48], patch.astype(bool))
    assert blob.sum() == patch.sum()
    grouped = masks[(1, 2, 0.0)]
    assert grouped[30:35, 0:5].any() and grouped[30:35, 6:10].any()  # two polygons, one instance
    disc = masks[(1, 3, 25.0)]
    assert abs(disc.sum() - np.pi * 5.5**2) < 6  # radius 5 plus the outline
    assert len(masks) == 5 and source.coco["images"][1]["file_name"] == "gone/b.png"
    assert 2 in source.image_bytes and 1 in source.image_paths  # b's pixels come from its imageData


def test_image_path_outside_the_folder_is_refused(tmp_path):
    folder = tmp_path / "data" / "annotated"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "data" / "secret.png")
    _labelme_file(folder / "a.json", [_shape("box", [[1, 1], [9, 9]], "rectangle")], "../secret.png")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    out = tmp_path / "data" / "out"
    argv = ["--labelme_dir", str(folder), "--output_file_prefix", str(out / "train"), "--num_shards", "1"]
    assert convert_coco_to_tfrecord.main([*argv, "--strict"]) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, inside or outside
    source = read_labelme_dir(str(folder))
    (problem,) = source.problems
    assert "a.json" in str(problem) and "'../secret.png' points outside" in str(problem) and "\n" not in str(problem)
    assert source.coco["images"] == []
    # labelme --output keeps JSON apart from the images: allowed inside the dataset folder given as root
    allowed = read_labelme_dir(str(folder), root=str(tmp_path / "data"))
    assert not allowed.problems and allowed.coco["images"][0]["file_name"] == "secret.png"


def test_split_holds_out_a_seeded_share(tmp_path):
    folder = tmp_path / "annotated"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(np.full((40, 50, 3), i, np.uint8)).save(folder / f"{i}.png")
        _labelme_file(folder / f"{i}.json", [_shape("box", [[1, 1], [9 + i, 9]], "rectangle")], f"{i}.png")
    runs = []
    for run in ("a", "b"):
        prefix = tmp_path / run / "train"
        argv = ["--labelme_dir", str(folder), "--output_file_prefix", str(prefix), "--num_shards", "2"]
        assert convert_coco_to_tfrecord.main([*argv, "--num_workers", "1", "--val_fraction", "0.3"]) == 0
        train = json.loads((tmp_path / run / "train.json").read_text())
        val = json.loads((tmp_path / run / "val.json").read_text())
        assert len(train["images"]) == 7 and len(val["images"]) == 3
        assert not {i["file_name"] for i in train["images"]} & {i["file_name"] for i in val["images"]}
        assert sum(1 for _ in tf.data.TFRecordDataset(tf.io.gfile.glob(str(tmp_path / run / "val-*")))) == 3
        runs.append(val["images"])
    assert runs[0] == runs[1]

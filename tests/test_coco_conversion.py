"""convert_coco_to_tfrecord: exact round trips on real external files, and bad input skipped and reported.

Round trips compare every decoded mask with pycocotools' own decoding of the JSON annotation (instances)
or with the panoptic PNG's pixels for that segment id, bit for bit.
"""

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED_TESTDATA
from PIL import Image
from pycocotools.coco import COCO

import convert_coco_to_tfrecord
from data import tfrecord_format as fmt
from data.categories import Categories
from data.coco_conversion import ConversionError, ConversionOptions, convert
from data.decoder import Decoder, segment_masks

DATUMARO = SHARED_TESTDATA / "datumaro" / "coco"
PANOPTICAPI = SHARED_TESTDATA / "panopticapi" / "sample_data"
LABELME = SHARED_TESTDATA / "labelme" / "examples" / "instance_segmentation" / "data_dataset_coco"


def _require(path):
    if not path.exists():
        pytest.skip(f"external test data {path} is absent")


def _convert(tmp_path, **kwargs):
    options = ConversionOptions(output_file_prefix=str(tmp_path / "out" / "train"), progress=False, **kwargs)
    lines = []
    stats = convert(options, log=lines.append)
    records = [r.numpy() for r in tf.data.TFRecordDataset(stats.shards)]
    return stats, records, lines


def _by_source_id(records, decoder):
    decoded = [decoder(r) for r in records]
    return {int(d["source_id"].numpy()): d for d in decoded}


def _assert_instances_round_trip(annotation_file, records, categories):
    """Every record's objects equal pycocotools' annToMask of the JSON annotations, in order."""
    coco = COCO(str(annotation_file))
    decoded = _by_source_id(records, Decoder(categories, "objects"))
    assert set(decoded) == set(coco.getImgIds())
    compared = 0
    for image_id, example in decoded.items():
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if a["segmentation"]]
        masks = example["masks"].numpy()
        assert masks.shape[0] == len(anns)
        info = coco.imgs[image_id]
        assert example["image"].shape == (info["height"], info["width"], 3)
        for mask, ann in zip(masks, anns, strict=True):
            np.testing.assert_array_equal(mask, coco.annToMask(ann))
            compared += 1
        np.testing.assert_array_equal(example["is_crowd"].numpy(), [bool(a["iscrowd"]) for a in anns])
        np.testing.assert_array_equal(example["classes"].numpy(), [categories.index_of(a["category_id"]) for a in anns])
    return compared


def test_datumaro_instances_uncompressed_rle_crowd(tmp_path):
    _require(DATUMARO)
    for split in ("train", "val"):
        annotations = DATUMARO / "annotations" / f"instances_{split}.json"
        stats, records, lines = _convert(
            tmp_path / split, image_dir=str(DATUMARO / "images" / split), object_annotations_file=str(annotations)
        )
        categories = Categories.load(str(tmp_path / split / "out" / "categories.json"))
        assert categories.ids == (1, 2, 4)
        compared = _assert_instances_round_trip(annotations, records, categories)
        if split == "val":  # a polygon and an uncompressed-RLE crowd region
            assert compared == 2 and not lines
            crowd = Decoder(categories)(records[0])
            assert crowd["is_crowd"].numpy().tolist() == [False, True]
        else:  # the one annotation is a box without segmentation: reported, not decoded
            assert compared == 0 and stats.problems == {"polygon with fewer than 3 points": 1}
            assert len(lines) == 1 and "instances_train.json" in lines[0] and "a.jpg" in lines[0]


def test_panopticapi_sample_every_segment_equals_the_png(tmp_path):
    _require(PANOPTICAPI)
    stats, records, lines = _convert(
        tmp_path,
        image_dir=str(PANOPTICAPI / "input_images"),
        panoptic_annotations_file=str(PANOPTICAPI / "panoptic_examples.json"),
        panoptic_masks_dir=str(PANOPTICAPI / "panoptic_examples"),
    )
    assert stats.images_written == 2 and not lines
    categories = Categories.load(str(tmp_path / "out" / "categories.json"))
    assert categories.num_classes == 133 and categories.isthing.count(True) == 80
    annotations = {a["image_id"]: a for a in json.load(open(PANOPTICAPI / "panoptic_examples.json"))["annotations"]}
    decoded = _by_source_id(records, Decoder(categories, "panoptic"))
    crowd_seen = 0
    for image_id, example in decoded.items():
        ann = annotations[image_id]
        rgb = np.asarray(Image.open(PANOPTICAPI / "panoptic_examples" / ann["file_name"]), np.uint32)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        segments = ann["segments_info"]
        masks = segment_masks(example["segment_map"], len(segments)).numpy()
        for mask, segment in zip(masks, segments, strict=True):
            np.testing.assert_array_equal(mask, ids == segment["id"])
        np.testing.assert_array_equal(example["is_crowd"].numpy(), [bool(s["iscrowd"]) for s in segments])
        np.testing.assert_array_equal(
            example["classes"].numpy(), [categories.index_of(s["category_id"]) for s in segments]
        )
        crowd_seen += sum(s["iscrowd"] for s in segments)
        # Model Garden's category mask holds the dataset category id of every pixel (0 = void).
        category_png = tf.train.Example.FromString(records[0 if image_id == 142238 else 1])
        category_png = category_png.features.feature[fmt.PANOPTIC_CATEGORY_MASK].bytes_list.value[0]
        category_mask = cv2.imdecode(np.frombuffer(category_png, np.uint8), cv2.IMREAD_UNCHANGED)
        expected = np.zeros_like(ids)
        for segment in segments:
            expected[ids == segment["id"]] = segment["category_id"]
        np.testing.assert_array_equal(category_mask, expected)
    assert crowd_seen >= 1


def test_panopticapi_detection_format_compressed_rle(tmp_path):
    _require(PANOPTICAPI)
    annotations = PANOPTICAPI / "panoptic_coco_detection_format.json"
    stats, records, lines = _convert(
        tmp_path, image_dir=str(PANOPTICAPI / "input_images"), object_annotations_file=str(annotations)
    )
    categories = Categories.load(str(tmp_path / "out" / "categories.json"))
    assert _assert_instances_round_trip(annotations, records, categories) == 50 and not lines


def test_labelme_coco_conversion(tmp_path):
    _require(LABELME)
    annotations = LABELME / "annotations.json"
    stats, records, lines = _convert(tmp_path, image_dir=str(LABELME), object_annotations_file=str(annotations))
    categories = Categories.load(str(tmp_path / "out" / "categories.json"))
    assert stats.images_written == 3 and not lines
    assert _assert_instances_round_trip(annotations, records, categories) >= 3


# ------------------------------------------------------------- bad input
def _write_jpeg(path, height, width, seed=0):
    image = np.random.default_rng(seed).integers(0, 255, (height, width, 3), np.uint8)
    cv2.imwrite(str(path), image)


def _bad_input_dataset(tmp_path):
    """Four images (one truncated, one missing) and annotations with every kind of bad input."""
    images = tmp_path / "images"
    images.mkdir()
    _write_jpeg(images / "good.jpg", 20, 30, seed=1)
    _write_jpeg(images / "also_good.jpg", 16, 16, seed=2)
    _write_jpeg(images / "truncated.jpg", 20, 30, seed=3)
    data = (images / "truncated.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 2])
    square = [2.0, 2.0, 10.0, 2.0, 10.0, 10.0, 2.0, 10.0]
    coco = {
        "images": [
            {"id": 1, "file_name": "good.jpg", "height": 20, "width": 30},
            {"id": 2, "file_name": "also_good.jpg", "height": 16, "width": 16},
            {"id": 3, "file_name": "truncated.jpg", "height": 20, "width": 30},
            {"id": 4, "file_name": "missing.jpg", "height": 20, "width": 30},
        ],
        "categories": [{"id": 1, "name": "thing"}, {"id": 7, "name": "other"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [square], "bbox": [2, 2, 8, 8], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 5]], "bbox": [1, 1, 4, 4]},
            {"id": 12, "image_id": 1, "category_id": 1, "segmentation": [square], "bbox": [40, 30, 5, 5]},
            {"id": 13, "image_id": 99, "category_id": 1, "segmentation": [square], "bbox": [2, 2, 8, 8]},
            {"id": 14, "image_id": 1, "category_id": 3, "segmentation": [square], "bbox": [2, 2, 8, 8]},
            {"id": 15, "image_id": 2, "category_id": 7, "segmentation": [square], "bbox": [2, 2, 8, 8], "iscrowd": 1},
            {"id": 16, "image_id": 3, "category_id": 1, "segmentation": [square], "bbox": [2, 2, 8, 8]},
        ],
    }
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(json.dumps(coco))
    return images, annotation_file, square


def test_bad_input_is_skipped_reported_and_good_records_intact(tmp_path):
    images, annotation_file, square = _bad_input_dataset(tmp_path)
    stats, records, lines = _convert(
        tmp_path, image_dir=str(images), object_annotations_file=str(annotation_file), num_shards=3
    )
    assert stats.problems == {
        "unreadable image": 2,
        "polygon with fewer than 3 points": 1,
        "box outside the image": 1,
        "annotation for a missing image": 1,
        "unknown category": 1,
    }
    assert stats.images_written == 2 and stats.images_skipped == 2 and len(lines) == 6
    assert any("truncated.jpg" in line and "unreadable image" in line for line in lines)
    assert any("missing.jpg" in line for line in lines)
    assert any("annotation 11" in line and "fewer than 3 points" in line for line in lines)
    assert any("annotation 12" in line and "box outside" in line for line in lines)
    assert any("annotation 13" in line and "image id 99" in line for line in lines)
    assert any("annotation 14" in line and "category id 3" in line for line in lines)

    coco = COCO(str(annotation_file))
    categories = Categories.load(str(tmp_path / "out" / "categories.json"))
    decoded = _by_source_id(records, Decoder(categories, "objects"))
    assert sorted(decoded) == [1, 2]
    np.testing.assert_array_equal(decoded[1]["masks"].numpy(), [coco.annToMask(coco.anns[10])])
    np.testing.assert_array_equal(decoded[2]["masks"].numpy(), [coco.annToMask(coco.anns[15])])
    assert decoded[2]["is_crowd"].numpy().tolist() == [True] and decoded[2]["classes"].numpy().tolist() == [1]
    stored = {tf.train.Example.FromString(r).features.feature[fmt.IMAGE_ENCODED].bytes_list.value[0] for r in records}
    assert stored == {(images / "good.jpg").read_bytes(), (images / "also_good.jpg").read_bytes()}  # bytes as they are


def test_strict_makes_bad_input_an_error(tmp_path, capsys):
    images, annotation_file, _ = _bad_input_dataset(tmp_path)
    with pytest.raises(ConversionError, match="instances.json.*image id 99"):
        _convert(tmp_path, image_dir=str(images), object_annotations_file=str(annotation_file), strict=True)
    argv = ["--image_dir", str(images), "--object_annotations_file", str(annotation_file)]
    argv += ["--output_file_prefix", str(tmp_path / "cli" / "x"), "--num_shards=2", "--strict"]
    assert convert_coco_to_tfrecord.main(argv) == 1
    assert "run without --strict" in capsys.readouterr().err


def test_model_garden_flags_and_shard_names(tmp_path, capsys):
    images, annotation_file, _ = _bad_input_dataset(tmp_path)
    argv = ["--image_dir", str(images), "--object_annotations_file", str(annotation_file)]
    argv += ["--output_file_prefix", str(tmp_path / "mg" / "train"), "--num_shards=8", "--include_masks"]
    argv += ["--noinclude_panoptic_masks", "--num_workers=1"]
    assert convert_coco_to_tfrecord.main(argv) == 0
    printed = capsys.readouterr().out  # not a terminal: plain lines, no progress bar's escape codes
    assert "\x1b" not in printed and "\r" not in printed and "wrote " in printed
    names = sorted(os.listdir(tmp_path / "mg"))
    assert names == ["categories.json"] + [f"train-{i:05d}-of-00008.tfrecord" for i in range(8)]
    args = convert_coco_to_tfrecord.parse_args(argv[:6] + ["--include_masks=false"])
    assert args.include_masks is False and args.include_panoptic_masks is True


# --------------------------------------------------- wide panoptic and semantic
def test_panoptic_with_300_segments_does_not_overflow(tmp_path):
    height, width = 20, 15  # 300 one-pixel segments; ids spread over all three PNG channels
    ids = (np.arange(height * width).reshape(height, width) * 40503 + 1).astype(np.uint32)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    (tmp_path / "pan").mkdir()
    Image.fromarray(rgb).save(tmp_path / "pan" / "a.png")
    _write_jpeg(tmp_path / "a.jpg", height, width)
    segments = [
        {"id": int(i), "category_id": 1 + n % 2, "iscrowd": int(n % 7 == 0), "area": 1}
        for n, i in enumerate(ids.ravel())
    ]
    panoptic = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": height, "width": width}],
        "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": segments}],
        "categories": [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0}],
    }
    (tmp_path / "panoptic.json").write_text(json.dumps(panoptic))
    stats, records, lines = _convert(
        tmp_path,
        image_dir=str(tmp_path),
        panoptic_annotations_file=str(tmp_path / "panoptic.json"),
        panoptic_masks_dir=str(tmp_path / "pan"),
    )
    assert not lines and stats.max_instances == sum(1 for s in segments if not s["iscrowd"])
    example = Decoder(Categories.from_coco(panoptic["categories"]), "panoptic")(records[0])
    np.testing.assert_array_equal(example["segment_map"].numpy(), np.arange(1, 301).reshape(height, width))
    assert example["is_crowd"].numpy().tolist() == [s["iscrowd"] == 1 for s in segments]


def test_semantic_label_pngs(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    label = np.zeros((12, 10), np.uint8)
    label[2:6, 1:4] = 3
    label[7:, 5:] = 150
    label[0, 0] = 200  # not a listed category: ignored
    _write_jpeg(tmp_path / "images" / "ADE_1.jpg", 12, 10)
    cv2.imwrite(str(tmp_path / "labels" / "ADE_1.png"), label)
    categories = {"categories": [{"id": i, "name": f"class{i}"} for i in range(1, 151)]}
    (tmp_path / "ade.json").write_text(json.dumps(categories))
    stats, records, lines = _convert(
        tmp_path,
        image_dir=str(tmp_path / "images"),
        semantic_masks_dir=str(tmp_path / "labels"),
        categories_file=str(tmp_path / "ade.json"),
    )
    assert stats.images_written == 1 and not lines
    example = Decoder(Categories.from_coco(categories["categories"]), "semantic")(records[0])
    # id 3 -> index 2 -> map value 3; id 150 -> index 149 -> 150; unlabelled 0 and unknown 200 -> 0 (ignore).
    expected = label.astype(np.int32)
    expected[0, 0] = 0
    np.testing.assert_array_equal(example["label_map"].numpy(), expected)
    assert example["classes"].shape == (150,)


# ------------------------------------------------ the command line on bad input
def _one_error_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, text
    return lines[0]


def test_command_line_refuses_input_that_would_convert_nothing(tmp_path, capsys):
    """Missing / empty --image_dir, a JSON list, malformed categories: exit 1, one line, nothing written."""
    import cli

    images, annotation_file, square = _bad_input_dataset(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "list.json").write_text(json.dumps([{"id": 1}]))
    (tmp_path / "no_ids.json").write_text(json.dumps({"images": [], "annotations": [], "categories": [{"n": 1}]}))
    every_image_gone = json.loads(annotation_file.read_text())
    every_image_gone["images"] = [{"file_name": "good.jpg"}, {"id": 2}]  # neither has both id and file_name
    (tmp_path / "no_image_ids.json").write_text(json.dumps(every_image_gone))
    cases = [
        (tmp_path / "nope", annotation_file, f"--image_dir {tmp_path / 'nope'} does not exist"),
        (tmp_path / "empty", annotation_file, f"--image_dir {tmp_path / 'empty'} is empty"),
        (images, tmp_path / "list.json", f"annotation file {tmp_path / 'list.json'} holds a JSON list"),
        (images, tmp_path / "no_ids.json", f"annotation file {tmp_path / 'no_ids.json'}: 'categories' is malformed"),
        (images, tmp_path / "no_image_ids.json", "no image was converted (0 of 0 skipped"),
    ]
    for image_dir, annotations, message in cases:
        out = tmp_path / "out"
        argv = ["--image-dir", str(image_dir), "--object-annotations-file", str(annotations)]
        argv += ["--output_file_prefix", str(out / "train"), "--num_workers=1"]
        assert cli.run(convert_coco_to_tfrecord.main, argv) == 1
        captured = capsys.readouterr()
        assert message in _one_error_line(captured.err), captured.err
        assert "Traceback" not in captured.err
        assert not out.exists() or sorted(os.listdir(out)) == [], sorted(os.listdir(out))
    assert "images[0] has no usable 'id'" in captured.err and "images[1] has no usable 'file_name'" in captured.err


def test_negative_area_and_missing_ids_are_reported_and_strict_leaves_no_partial_shards(tmp_path, capsys):
    import cli

    images, annotation_file, square = _bad_input_dataset(tmp_path)
    coco = json.loads(annotation_file.read_text())
    coco["annotations"].append({"id": 17, "image_id": 2, "category_id": 1, "segmentation": [square], "area": -5})
    coco["annotations"].append({"id": 18, "category_id": 1, "segmentation": [square]})  # no image_id
    annotation_file.write_text(json.dumps(coco))
    stats, records, lines = _convert(tmp_path, image_dir=str(images), object_annotations_file=str(annotation_file))
    assert stats.problems["negative area"] == 1 and stats.images_written == 2
    assert any("annotation 17" in line and "area -5.0" in line for line in lines), lines
    assert any("annotation 18 has no usable 'image_id'" in line for line in lines), lines

    # --strict stops at the first problem: the shards written so far are removed, nothing else is left
    out = tmp_path / "strict"
    argv = ["--image_dir", str(images), "--object_annotations_file", str(annotation_file)]
    argv += ["--output_file_prefix", str(out / "train"), "--num_shards=2", "--num_workers=1", "--strict"]
    coco["annotations"] = [a for a in coco["annotations"] if a["id"] in (10, 15, 17)]  # bad input on image 2 only
    annotation_file.write_text(json.dumps(coco))
    assert cli.run(convert_coco_to_tfrecord.main, argv) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "annotation 17" in line and "negative area" in line, line
    assert sorted(os.listdir(out)) == []

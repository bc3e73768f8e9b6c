"""CVAT for images 1.1 XML: CVAT's docs example and datumaro's CVAT exports read where the XML says,
our XML written with CVAT's structure and read back to the same masks, hostile XML refused."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED_TESTDATA
from pycocotools import mask as mask_utils

import convert_coco_to_tfrecord
from data.cvat import (
    CvatError,
    add_mask,
    add_polygon,
    image_element,
    new_document,
    parse_xml,
    read_cvat_xml,
    write_document,
)
from data.labelme import mask_to_polygons
from data.synthetic import SyntheticSpec, make_scene

CVAT = SHARED_TESTDATA / "cvat"
DOCS_EXAMPLE = CVAT / "xml_format_images_example.xml"
DATUMARO = CVAT / "datumaro_cvat" / "for_images"


def _require(path):
    if not path.exists():
        pytest.skip(f"external test data {path} is absent")


def _masks(source):
    return [(a, mask_utils.decode(a["segmentation"]).astype(bool)) for a in source.coco["annotations"]]


def test_docs_example_mask_polygon_and_box_land_where_the_xml_says():
    _require(DOCS_EXAMPLE)
    source = read_cvat_xml(str(DOCS_EXAMPLE), str(CVAT))
    assert [c["name"] for c in source.coco["categories"]] == ["car", "traffic_line", "wheel", "plate"]
    assert source.coco["images"] == [{"id": 1, "file_name": "filename000.jpg", "height": 1200, "width": 1600}]
    assert not source.problems
    assert source.notes == {
        "polyline shapes skipped (no area)": 2,
        "points shapes skipped (no area)": 1,
        "tag shapes skipped (no area)": 1,
        "skeleton shapes skipped (no area)": 1,
        "box-only annotations (mask = the filled box)": 1,
    }
    (box, box_mask), (polygon, polygon_mask), (disc, disc_mask) = _masks(source)

    # <mask rle="3, 5, 7, ..." left="707" top="888" width="13" height="15">: a 13 x 15 disc at (707, 888).
    ys, xs = np.nonzero(disc_mask)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (707, 888, 719, 902)
    patch = disc_mask[888:903, 707:720]
    assert patch.sum(1).tolist() == [5, 7, 9, 11, 11, 12, 12, 13, 13, 12, 12, 11, 9, 7, 5]
    for line in [*patch, *patch.T]:  # a disc: one run of foreground in every row and every column
        assert np.count_nonzero(np.diff(np.concatenate([[0], line.astype(int), [0]]))) == 2
    assert abs(patch.mean() - np.pi / 4) < 0.03  # fills its box as an ellipse does
    assert disc["category_id"] == 1 and disc["attributes"] == {"occluded": False, "z_order": 0}

    # <box label="plate" xtl="797.33" ytl="870.92" xbr="965.52" ybr="928.94" z_order="4">
    assert box["category_id"] == 4 and box["attributes"]["box_only"] and box["attributes"]["z_order"] == 4
    np.testing.assert_allclose(box["bbox"], [797.33, 870.92, 965.52 - 797.33, 928.94 - 870.92])
    ys, xs = np.nonzero(box_mask)
    assert abs(xs.min() - 797.33) <= 1 and abs(xs.max() + 1 - 965.52) <= 1
    assert abs(ys.min() - 870.92) <= 1 and abs(ys.max() + 1 - 928.94) <= 1
    assert box_mask.sum() == (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)  # filled

    # <polygon label="car" points="561.30,916.23;...">: its extent, and pycocotools' raster of the points.
    root = ET.parse(DOCS_EXAMPLE).getroot()
    points = np.array([p.split(",") for p in root.find("image/polygon").get("points").split(";")], float)
    ys, xs = np.nonzero(polygon_mask)
    assert abs(xs.min() - points[:, 0].min()) <= 1 and abs(xs.max() + 1 - points[:, 0].max()) <= 1
    assert abs(ys.min() - points[:, 1].min()) <= 1 and abs(ys.max() + 1 - points[:, 1].max()) <= 1
    assert polygon["category_id"] == 1 and polygon["area"] == polygon_mask.sum() > 300_000


def test_datumaro_exports_task_and_project(tmp_path):
    _require(DATUMARO)
    task = read_cvat_xml(str(DATUMARO / "export_task" / "train.xml"), str(DATUMARO / "export_task" / "images"))
    (box,) = task.coco["annotations"]
    assert box["attributes"] == {"a1": "true", "a2": "v3", "a3": "0003", "a4": "2.4", "occluded": True,
                                 "z_order": 1, "box_only": True}  # fmt: skip
    assert box["bbox"] == [0.0, 2.0, 4.0, 2.0]
    (problem,) = task.problems  # <polygon label=""> of img1.jpg: no such label in <meta>
    assert "train.xml (image 'img1.jpg'), <polygon> 0 (label '')" in str(problem) and "\n" not in str(problem)

    project = DATUMARO / "export_project"
    source = read_cvat_xml(str(project / "annotations.xml"), str(project / "images"))
    assert [i["file_name"] for i in source.coco["images"]] == [
        f"{subset}/img{i}.jpg" for subset in ("Test", "Train", "Validation") for i in (0, 1)
    ]
    assert not source.problems and len(source.coco["annotations"]) == 6
    for ann, mask in _masks(source):
        if ann["attributes"].get("box_only"):  # xtl=0 ytl=2 xbr=4 ybr=4
            assert mask[2:4, 0:4].all() and mask.sum() == 8

    prefix = tmp_path / "out" / "train"
    argv = ["--cvat_xml", str(project / "annotations.xml"), "--image_dir", str(project / "images")]
    assert convert_coco_to_tfrecord.main([*argv, "--output_file_prefix", str(prefix), "--num_shards", "1"]) == 0
    assert sum(1 for _ in tf.data.TFRecordDataset(str(prefix) + "-00000-of-00001.tfrecord")) == 6
    assert (tmp_path / "out" / "categories.json").exists() and (tmp_path / "out" / "train.json").exists()


def _written_and_read_back(tmp_path, scene, shape: str, tolerance: float = 0.5):
    height, width = scene.image.shape[:2]
    root = new_document(["circle", "rectangle", "triangle", "star"])
    image = image_element(root, "0.png", width, height)
    for group, thing in enumerate(scene.things, 1):
        label = ["circle", "rectangle", "triangle", "star"][thing.category_id - 1]
        if shape == "mask":
            add_mask(image, label, thing.mask)
        else:
            polygons = mask_to_polygons(thing.mask, tolerance, pixel_edges=True)
            for polygon in polygons:
                add_polygon(image, label, polygon, group_id=group if len(polygons) > 1 else 0)
    (tmp_path / "images").mkdir(exist_ok=True)
    write_document(root, str(tmp_path / f"{shape}.xml"))
    return read_cvat_xml(str(tmp_path / f"{shape}.xml"), str(tmp_path / "images"))


def test_our_xml_reads_back_to_the_same_masks_and_keeps_cvats_structure(tmp_path):
    spec = SyntheticSpec(seed=3, height=96, width=128, min_objects=3, max_objects=5)
    ious = []
    for index in range(4):
        scene = make_scene(spec, "val", index)
        masks = _written_and_read_back(tmp_path, scene, "mask")
        assert [a["category_id"] for a in masks.coco["annotations"]] == [t.category_id for t in scene.things]
        for (_, mask), thing in zip(_masks(masks), scene.things, strict=True):
            np.testing.assert_array_equal(mask, thing.mask)
        polygons = _written_and_read_back(tmp_path, scene, "polygon")
        for (_, mask), thing in zip(_masks(polygons), scene.things, strict=True):
            ious.append((mask & thing.mask).sum() / (mask | thing.mask).sum())
    print(f"polygon (approxPolyDP 0.5 px) vs mask IoU over {len(ious)} things: min {min(ious):.3f}")
    assert min(ious) >= 0.95

    _require(DOCS_EXAMPLE)

    def names(path):
        tags, attributes = set(), {}
        for element in ET.parse(path).getroot().iter():
            tags.add(element.tag)
            attributes.setdefault(element.tag, set()).update(element.attrib)
        return tags, attributes

    example_tags, example_attributes = names(DOCS_EXAMPLE)
    for shape in ("mask", "polygon"):
        tags, attributes = names(tmp_path / f"{shape}.xml")
        assert tags <= example_tags, tags - example_tags
        for tag, found in attributes.items():
            allowed = example_attributes[tag] | ({"source", "group_id"} if tag == "polygon" else set())
            assert found <= allowed, (tag, found - allowed)  # CVAT >= 2 writes `source` on every shape
    assert (tmp_path / "mask.xml").read_text().startswith("<?xml version='1.0' encoding='utf-8'?>\n<annotations>")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotations><version>1.1</version><meta><task><labels><label><name>&lol3;</name></label></labels></task></meta>
<image id="0" name="a.jpg" width="8" height="8"/></annotations>"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE annotations [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotations><version>1.1</version><meta><task><labels><label><name>&secret;</name></label></labels></task></meta>
<image id="0" name="a.jpg" width="8" height="8"/></annotations>"""
PARENT_PATH = """<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version><meta><task><labels><label><name>a</name></label></labels></task></meta>
<image id="0" name="../outside.png" width="8" height="8"><box label="a" xtl="1" ytl="1" xbr="4" ybr="4"/></image>
</annotations>"""


@pytest.mark.parametrize("text, words", [(BILLION_LAUGHS, "DTD"), (EXTERNAL_ENTITY, "DTD")])
def test_entity_bombs_and_external_entities_are_refused(tmp_path, capsys, text, words):
    xml = tmp_path / "task" / "annotations.xml"
    xml.parent.mkdir()
    xml.write_text(text)
    with pytest.raises(CvatError, match=words) as raised:
        parse_xml(str(xml))
    assert "\n" not in str(raised.value) and str(xml) in str(raised.value)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv = ["--cvat_xml", str(xml), "--image_dir", str(tmp_path / "task"), "--output_file_prefix"]
    assert convert_coco_to_tfrecord.main([*argv, str(tmp_path / "task" / "out" / "train"), "--num_shards=1"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "refused" in error[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_image_name_leaving_the_folder_is_refused(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "task" / "images").mkdir(parents=True)
    (tmp_path / "task" / "images" / "notes.txt").write_text("not an image")  # the folder is not empty
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "task" / "outside.png")
    (tmp_path / "task" / "annotations.xml").write_text(PARENT_PATH)
    source = read_cvat_xml(str(tmp_path / "task" / "annotations.xml"), str(tmp_path / "task" / "images"))
    (problem,) = source.problems
    assert "'../outside.png' leaves" in str(problem) and source.coco["images"] == []
    out = tmp_path / "task" / "images" / "out"
    argv = ["--cvat_xml", str(tmp_path / "task" / "annotations.xml"), "--image_dir", str(tmp_path / "task" / "images")]
    # The one image is refused, so nothing is converted: exit 1, the refusal and the error named.
    assert convert_coco_to_tfrecord.main([*argv, "--output_file_prefix", str(out / "train"), "--num_shards=1"]) == 1
    err = capsys.readouterr().err
    assert "'../outside.png' leaves" in err and "error: no image was converted" in err
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - {
        tmp_path / "task" / n for n in ("outside.png", "annotations.xml", "images/notes.txt")
    }
    assert all(out in p.parents for p in written)

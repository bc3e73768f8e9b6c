"""The synthetic dataset: deterministic, the same masks in every format, occlusion resolved, every
category present, and converted to TFRecords and decoded by data/ without a skipped item."""

import filecmp
import json
import os
import shlex

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools.coco import COCO

import convert_coco_to_tfrecord
from config import Mask2FormerConfig
from data.categories import Categories
from data.decoder import Decoder, segment_masks
from data.pipeline import build_dataset
from data.synthetic import CATEGORIES, SyntheticSpec, make_scene, write_dataset
from tools import make_synthetic_dataset

SIZE = (64, 96)  # non-square, to catch a swapped height and width
SPLITS = {"train": 6, "val": 3}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The command line's output folder: 6 train and 3 val images of 64x96."""
    out_dir = str(tmp_path_factory.mktemp("synthetic") / "shapes")
    argv = [out_dir, "--train", "6", "--val", "3", "--seed", "3", "--size", *map(str, SIZE), "--format", "png"]
    assert make_synthetic_dataset.main(argv) == 0
    return out_dir


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names)


def _panoptic_ids(path):
    rgb = np.asarray(Image.open(path), np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def test_same_seed_same_bytes_other_seed_other_images(dataset, tmp_path):
    spec = SyntheticSpec(height=SIZE[0], width=SIZE[1], image_format="png", seed=3)
    write_dataset(str(tmp_path / "again"), spec, SPLITS)
    files = _files(dataset)
    assert files == _files(tmp_path / "again") and len(files) == 3 * 9 + 5
    match, mismatch, errors = filecmp.cmpfiles(dataset, tmp_path / "again", files, shallow=False)
    assert not mismatch and not errors

    # A split of N images is the first N of a longer one; another seed gives other images.
    first = make_scene(spec, "train", 2)
    np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(dataset, "train", "000003.png"))), first.image)
    other = make_scene(SyntheticSpec(height=SIZE[0], width=SIZE[1], seed=4), "train", 2)
    assert np.abs(other.image.astype(int) - first.image).mean() > 10


@pytest.mark.parametrize("split", list(SPLITS))
def test_instances_panoptic_and_semantic_agree(dataset, split):
    annotations = os.path.join(dataset, "annotations")
    coco = COCO(os.path.join(annotations, f"instances_{split}.json"))
    panoptic = json.load(open(os.path.join(annotations, f"panoptic_{split}.json")))
    assert len(coco.getImgIds()) == SPLITS[split] == len(panoptic["annotations"])
    isthing = {c["id"]: c["isthing"] for c in panoptic["categories"]}
    for entry in panoptic["annotations"]:
        ids = _panoptic_ids(os.path.join(annotations, f"panoptic_{split}", entry["file_name"]))
        semantic = np.asarray(Image.open(os.path.join(annotations, f"semantic_{split}", entry["file_name"])))
        assert ids.shape == semantic.shape == SIZE
        segments = entry["segments_info"]
        assert sorted(np.unique(ids)) == sorted(s["id"] for s in segments)  # no void, no unlisted id
        things = [s for s in segments if isthing[s["category_id"]]]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=entry["image_id"]))
        assert len(anns) == len(things) and {isthing[s["category_id"]] for s in segments} == {0, 1}
        for ann, segment in zip(anns, things, strict=True):
            mask = ids == segment["id"]
            np.testing.assert_array_equal(coco.annToMask(ann), mask)
            assert ann["category_id"] == segment["category_id"] and ann["iscrowd"] == segment["iscrowd"] == 0
            assert ann["area"] == segment["area"] == mask.sum() and ann["bbox"] == segment["bbox"]
        for segment in segments:
            mask = ids == segment["id"]
            assert segment["area"] == mask.sum()
            assert np.all(semantic[mask] == segment["category_id"])
            ys, xs = np.nonzero(mask)
            assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_occluded_things_keep_only_their_visible_pixels():
    spec = SyntheticSpec(height=64, width=64, min_objects=5, max_objects=6, seed=1)
    hidden_pixels = 0
    for index in range(6):
        scene = make_scene(spec, "train", index)
        front = np.zeros((64, 64), bool)
        for thing in reversed(scene.things):  # front to back
            np.testing.assert_array_equal(thing.mask, thing.full_mask & ~front)
            assert thing.mask.sum() >= spec.min_visible_fraction * thing.full_mask.sum()
            hidden_pixels += (thing.full_mask & front).sum()
            front |= thing.full_mask
        coverage = sum(t.mask.astype(int) for t in scene.things) + sum(m.astype(int) for m in scene.stuff.values())
        assert coverage.min() == coverage.max() == 1  # disjoint, and every pixel labelled
    assert hidden_pixels > 100  # the scenes do have occlusion


def test_every_category_appears(dataset):
    annotations = os.path.join(dataset, "annotations")
    for split in SPLITS:
        instances = json.load(open(os.path.join(annotations, f"instances_{split}.json")))
        panoptic = json.load(open(os.path.join(annotations, f"panoptic_{split}.json")))
        all_ids = {c["id"] for c in CATEGORIES}
        thing_ids = {c["id"] for c in CATEGORIES if c["isthing"]}
        assert {c["id"] for c in instances["categories"]} == {a["category_id"] for a in instances["annotations"]}
        assert {a["category_id"] for a in instances["annotations"]} == thing_ids
        assert {s["category_id"] for a in panoptic["annotations"] for s in a["segments_info"]} == all_ids
        semantic_dir = os.path.join(annotations, f"semantic_{split}")
        values = set().union(
            *(np.unique(np.asarray(Image.open(os.path.join(semantic_dir, n)))) for n in os.listdir(semantic_dir))
        )
        assert values == all_ids


def test_bad_spec_is_refused_in_one_sentence(capsys, tmp_path):
    assert make_synthetic_dataset.main([str(tmp_path), "--size", "16", "16"]) == 1
    assert "too small" in capsys.readouterr().err
    with pytest.raises(ValueError, match="smallest thing radius is 3.2 pixels"):
        SyntheticSpec(height=40, width=64).validate()
    with pytest.raises(ValueError, match="min_objects"):
        SyntheticSpec(min_objects=3, max_objects=2).validate()


def _convert(dataset, split, tmp_path):
    """Runs the commands the generator printed (one worker, --strict: any bad input fails)."""
    for command in make_synthetic_dataset.convert_commands(dataset, split):
        argv = shlex.split(command)[2:] + ["--num_workers=1", "--strict"]
        argv = [a.replace(f"{dataset}/tfrecords", f"{tmp_path}/tfrecords") for a in argv]
        assert convert_coco_to_tfrecord.main(argv) == 0


def test_converts_to_tfrecords_and_decodes_without_skips(dataset, tmp_path, capsys):
    for split in SPLITS:
        _convert(dataset, split, tmp_path)
    out = capsys.readouterr()
    assert "skipped" not in out.err and out.out.count("no bad input") == 4

    categories = Categories.load(str(tmp_path / "tfrecords" / "categories.json"))
    assert categories.num_classes == 6 and categories.isthing == (True,) * 4 + (False,) * 2
    annotations = os.path.join(dataset, "annotations")
    coco = COCO(os.path.join(annotations, "instances_train.json"))
    panoptic = {
        a["image_id"]: a for a in json.load(open(os.path.join(annotations, "panoptic_train.json")))["annotations"]
    }
    records = list(tf.data.TFRecordDataset(str(tmp_path / "tfrecords" / "train-00000-of-00001.tfrecord")))
    semantic_records = list(
        tf.data.TFRecordDataset(str(tmp_path / "tfrecords_semantic" / "train-00000-of-00001.tfrecord"))
    )
    assert len(records) == len(semantic_records) == SPLITS["train"]
    for record, semantic_record in zip(records, semantic_records, strict=True):
        objects = Decoder(categories, "objects")(record)
        image_id = int(objects["source_id"].numpy())
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        np.testing.assert_array_equal(objects["masks"].numpy(), [coco.annToMask(a) for a in anns])
        np.testing.assert_array_equal(objects["classes"].numpy(), [a["category_id"] - 1 for a in anns])

        segments = panoptic[image_id]["segments_info"]
        decoded = Decoder(categories, "panoptic")(record)
        ids = _panoptic_ids(os.path.join(annotations, "panoptic_train", panoptic[image_id]["file_name"]))
        masks = segment_masks(decoded["segment_map"], len(segments)).numpy()
        np.testing.assert_array_equal(masks, [ids == s["id"] for s in segments])
        np.testing.assert_array_equal(decoded["classes"].numpy(), [s["category_id"] - 1 for s in segments])

        label_map = Decoder(categories, "semantic")(semantic_record)["label_map"].numpy()
        semantic = np.asarray(Image.open(os.path.join(annotations, "semantic_train", f"{image_id - 1 + 1:06d}.png")))
        np.testing.assert_array_equal(label_map, semantic)  # category id c has index c - 1, stored + 1

    # The training pipeline gives one contract-shaped batch for every task.
    for task, folder in (("instance", "tfrecords"), ("panoptic", "tfrecords"), ("semantic", "tfrecords_semantic")):
        config = Mask2FormerConfig()
        config.model.num_classes = 6
        config.data.train_files = str(tmp_path / folder / "train-*.tfrecord")
        config.data.image_size = (64, 64)
        config.data.max_instances = 16
        config.data.seed = 0
        config.inference.task = task
        batch = next(iter(build_dataset(config.validate(), "train", batch_size=2)))
        assert batch["masks"].shape == (2, 16, 64, 64) and batch["valid"].numpy().any(axis=1).all()
        assert int(tf.reduce_max(tf.where(batch["valid"], batch["labels"], 0))) < 6


def test_ground_truth_scores_one_against_itself_in_test_map(dataset, tmp_path, capsys):
    """The evaluation reads the synthetic ground truth: as predictions it scores mask AP 1 and PQ 1."""
    import test_map

    annotations = os.path.join(dataset, "annotations")
    gt = os.path.join(annotations, "instances_val.json")
    results = [{**a, "score": 1.0} for a in json.load(open(gt))["annotations"]]
    json.dump(results, open(tmp_path / "results.json", "w"))
    argv = ["--gt", gt, "--predictions", str(tmp_path / "results.json"), "--output", str(tmp_path / "m.json")]
    assert test_map.main(argv)["segm"]["AP"] == pytest.approx(1.0)

    panoptic_gt = os.path.join(annotations, "panoptic_val.json")
    argv = ["--gt", panoptic_gt, "--predictions", panoptic_gt, "--pred-dir", os.path.join(annotations, "panoptic_val")]
    metrics = test_map.main([*argv, "--workers", "1", "--output", str(tmp_path / "pq.json")])
    assert metrics["All"]["pq"] == pytest.approx(1.0) and metrics["Stuff"]["n"] == 2 and metrics["Things"]["n"] == 4

"""Decoder, parsers and build_dataset: 0, 1 and many instances, eagerly and inside tf.data; augmentation
keeps image, masks and boxes aligned; the static training contract; determinism with a seed."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from config import Mask2FormerConfig
from data import tfrecord_format as fmt
from data.categories import Categories
from data.decoder import Decoder
from data.parser import EvalParser, TrainParser, _nearest_indices, _resample_image
from data.pipeline import build_dataset

CATEGORIES = Categories.from_coco([{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}, {"id": 12, "name": "sky"}])


def _feature(values, kind):
    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if kind == "int":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def make_example(image, masks, category_ids, crowd, source_id=1, segment_map=None) -> bytes:
    """A record as the converter writes it: objects (masks given) or panoptic (segment_map given)."""
    height, width = image.shape[:2]
    features = {
        fmt.IMAGE_ENCODED: _feature([fmt.encode_png(image[..., ::-1])], "bytes"),
        fmt.IMAGE_HEIGHT: _feature([height], "int"),
        fmt.IMAGE_WIDTH: _feature([width], "int"),
        fmt.IMAGE_SOURCE_ID: _feature([str(source_id).encode()], "bytes"),
    }
    if segment_map is None:
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([ys.min() / height, xs.min() / width, (ys.max() + 1) / height, (xs.max() + 1) / width])
        boxes = np.reshape(np.array(boxes, np.float32), (-1, 4))
        features.update(
            {
                fmt.OBJECT_MASK: _feature([fmt.encode_png(m.astype(np.uint8)) for m in masks], "bytes"),
                fmt.OBJECT_LABEL: _feature(category_ids, "int"),
                fmt.OBJECT_IS_CROWD: _feature([int(c) for c in crowd], "int"),
                fmt.OBJECT_YMIN: _feature(boxes[:, 0], "float"),
                fmt.OBJECT_XMIN: _feature(boxes[:, 1], "float"),
                fmt.OBJECT_YMAX: _feature(boxes[:, 2], "float"),
                fmt.OBJECT_XMAX: _feature(boxes[:, 3], "float"),
            }
        )
    else:
        features.update(
            {
                fmt.PANOPTIC_INSTANCE_MASK: _feature([fmt.encode_png(segment_map.astype(np.uint16))], "bytes"),
                fmt.SEGMENT_LABEL: _feature(category_ids, "int"),
                fmt.SEGMENT_IS_CROWD: _feature([int(c) for c in crowd], "int"),
            }
        )
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def random_instances(count, height=24, width=32, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (height, width, 3), np.uint8)
    masks = np.zeros((count, height, width), np.uint8)
    for n in range(count):
        y, x = rng.integers(0, height - 6), rng.integers(0, width - 6)
        masks[n, y : y + rng.integers(3, 7), x : x + rng.integers(3, 7)] = 1
    category_ids = [CATEGORIES.ids[n % 3] for n in range(count)]
    return image, masks, category_ids


def _in_dataset(fn, *inputs):
    """fn(*inputs) run inside Dataset.map (graph mode), as numpy."""
    dataset = tf.data.Dataset.from_tensors(inputs).map(fn)
    return next(iter(dataset))


@pytest.mark.parametrize("count", [0, 1, 7])
def test_decoder_eager_and_in_dataset_map(count):
    image, masks, category_ids = random_instances(count, seed=count)
    crowd = [n == 2 for n in range(count)]
    record = make_example(image, masks, category_ids, crowd)
    decoder = Decoder(CATEGORIES, "objects")
    for decoded in (decoder(tf.constant(record)), _in_dataset(decoder, tf.constant(record))):
        np.testing.assert_array_equal(decoded["image"].numpy(), image)
        assert decoded["masks"].shape == (count, 24, 32) and decoded["masks"].dtype == tf.uint8
        np.testing.assert_array_equal(decoded["masks"].numpy(), masks)
        np.testing.assert_array_equal(decoded["classes"].numpy(), [CATEGORIES.index_of(i) for i in category_ids])
        np.testing.assert_array_equal(decoded["is_crowd"].numpy(), crowd)
        assert decoded["boxes"].shape == (count, 4)


@pytest.mark.parametrize("count", [0, 1, 7])
def test_train_parser_contract_eager_and_in_dataset_map(count):
    image, masks, category_ids = random_instances(count, seed=count)
    crowd = [n == 2 for n in range(count)]
    record = tf.constant(make_example(image, masks, category_ids, crowd))
    decoder = Decoder(CATEGORIES, "objects")
    # Fitting 24 x 32 into 32 x 64 scales by 4/3; jitter 0.75 undoes it: identity plus padding, no flip.
    parser = TrainParser(image_size=(32, 64), max_instances=10, scale_range=(0.75, 0.75), horizontal_flip=False)
    seed = tf.constant([0, 5], tf.int64)
    eager = parser(decoder(record), seed)
    mapped = _in_dataset(lambda r, s: parser(decoder(r), s), record, seed)
    kept = [n for n in range(count) if not crowd[n]]
    for out in (eager, mapped):
        assert out["image"].shape == (32, 64, 3) and out["image"].dtype == tf.float32
        assert out["masks"].shape == (10, 32, 64) and out["masks"].dtype == tf.uint8
        assert out["labels"].dtype == tf.int32 and out["valid"].dtype == tf.bool
        np.testing.assert_allclose(out["image"][:24, :32].numpy(), image, atol=1e-3)
        assert np.all(out["image"][24:].numpy() == 128) and np.all(out["image"][:, 32:].numpy() == 128)
        np.testing.assert_array_equal(out["valid"].numpy(), np.arange(10) < len(kept))
        np.testing.assert_array_equal(out["masks"][: len(kept), :24, :32].numpy(), masks[kept])
        assert out["masks"][len(kept) :].numpy().sum() == 0 and out["masks"][:, 24:].numpy().sum() == 0
        np.testing.assert_array_equal(
            out["labels"][: len(kept)].numpy(), [CATEGORIES.index_of(category_ids[n]) for n in kept]
        )
    for key in ("image", "masks", "labels", "valid"):
        np.testing.assert_array_equal(eager[key].numpy(), mapped[key].numpy())


def test_lsj_resampling_equals_resize_then_crop():
    image = tf.constant(np.random.default_rng(0).integers(0, 255, (30, 40, 3)), tf.uint8)
    for scaled, offset in (((75, 100), (20, 35)), ((9, 12), (0, 0))):
        crop = tf.minimum(tf.constant(scaled), 48)
        resized = tf.image.resize(tf.cast(image, tf.float32), scaled, antialias=True)
        expected = resized[offset[0] : offset[0] + crop[0], offset[1] : offset[1] + crop[1]]
        got = _resample_image(image, tf.constant(scaled), tf.constant(offset), crop)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-3)
        labels = tf.reshape(tf.range(30 * 40), (30, 40))
        nearest = tf.image.resize(labels[..., None], scaled, method="nearest")[..., 0]
        rows = _nearest_indices(30, scaled[0], offset[0], crop[0])
        cols = _nearest_indices(40, scaled[1], offset[1], crop[1])
        np.testing.assert_array_equal(
            tf.gather(tf.gather(labels, rows), cols, axis=1).numpy(),
            nearest[offset[0] : offset[0] + crop[0], offset[1] : offset[1] + crop[1]].numpy(),
        )


def _bbox(binary):
    ys, xs = np.nonzero(binary)
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32)


def test_augmentation_keeps_image_mask_and_box_aligned():
    """A white rectangle drawn in the image, its mask and its box are found in the same place after
    random flips, scales and crops (to within one output pixel)."""
    height, width = 60, 90
    image = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((1, height, width), np.uint8)
    image[8:30, 50:80] = 255  # off-centre, so a flip moves it
    mask[0, 8:30, 50:80] = 1
    record = tf.constant(make_example(image, mask, [9], [False]))
    decoder = Decoder(CATEGORIES, "objects")
    parser = TrainParser(image_size=(64, 64), max_instances=3, scale_range=(0.5, 2.0), with_extras=True)
    centres, checked = [], 0
    for step in range(24):
        out = parser(decoder(record), tf.constant([7, step], tf.int64))
        if not out["valid"][0]:
            continue  # the crop missed the rectangle
        target = out["masks"][0].numpy()
        bright = out["image"].numpy()[..., 0] > 160  # rectangle 255, background 0, padding 128
        box = out["boxes"][0].numpy()
        np.testing.assert_allclose(_bbox(bright), _bbox(target), atol=1.0)
        np.testing.assert_allclose(box, _bbox(target), atol=1.0)
        assert out["labels"][0] == CATEGORIES.index_of(9) and not out["valid"][1]
        assert np.all(out["ignore_mask"].numpy()[target > 0] == 0)
        scale = (box[2] - box[0]) / 22.0
        centres.append(((box[1] + box[3]) / 2) / scale)
        checked += 1
    assert checked >= 8
    assert np.std(centres) > 1.0  # flips and crops did move the shape around


def test_crowd_is_ignored_not_a_target():
    image, masks, category_ids = random_instances(3, seed=3)
    record = tf.constant(make_example(image, masks, category_ids, [False, True, False]))
    parser = TrainParser(
        image_size=(24, 32), max_instances=5, scale_range=(1.0, 1.0), horizontal_flip=False, with_extras=True
    )
    out = parser(Decoder(CATEGORIES)(record), tf.constant([0, 0], tf.int64))
    assert out["valid"].numpy().sum() == 2
    np.testing.assert_array_equal(out["ignore_mask"].numpy(), masks[1])


def test_more_instances_than_slots_keeps_the_largest():
    height, width = 16, 40
    masks = np.zeros((6, height, width), np.uint8)
    for n in range(6):  # instance n covers n + 1 columns
        masks[n, :, 6 * n : 6 * n + n + 1] = 1
    record = tf.constant(make_example(np.zeros((height, width, 3), np.uint8), masks, [3] * 6, [False] * 6))
    parser = TrainParser(image_size=(16, 40), max_instances=4, scale_range=(1.0, 1.0), horizontal_flip=False)
    out = parser(Decoder(CATEGORIES)(record), tf.constant([0, 0], tf.int64))
    assert out["valid"].numpy().all() and int(out["num_targets"]) == 6  # the count before the limit
    np.testing.assert_array_equal(out["masks"].numpy(), masks[2:])  # the four largest, in their order


def test_panoptic_and_semantic_targets():
    height, width = 12, 16
    segment_map = np.zeros((height, width), np.int32)
    segment_map[:6] = 1  # stuff "sky"
    segment_map[6:, :8] = 2  # a crowd of cats
    segment_map[6:, 8:] = 3  # a dog
    image = np.zeros((height, width, 3), np.uint8)
    record = tf.constant(make_example(image, None, [12, 3, 9], [False, True, False], segment_map=segment_map))
    parser = TrainParser(
        image_size=(16, 16), max_instances=4, scale_range=(1.0, 1.0), horizontal_flip=False, with_extras=True
    )
    out = parser(Decoder(CATEGORIES, "panoptic")(record), tf.constant([0, 0], tf.int64))
    assert out["valid"].numpy().tolist() == [True, True, False, False]
    assert out["labels"][:2].numpy().tolist() == [2, 1]
    np.testing.assert_array_equal(out["masks"][0, :12].numpy(), segment_map == 1)
    np.testing.assert_array_equal(out["masks"][1, :12].numpy(), segment_map == 3)
    np.testing.assert_array_equal(out["ignore_mask"][:12].numpy(), segment_map == 2)

    # Semantic: one mask per class present after the crop; label 0 (unlabelled) is ignore.
    label_png = fmt.encode_png(np.where(segment_map == 2, 0, np.array([0, 12, 0, 9])[segment_map]).astype(np.uint8))
    features = {
        fmt.IMAGE_ENCODED: _feature([fmt.encode_png(image)], "bytes"),
        fmt.SEMANTIC_ENCODED: _feature([label_png], "bytes"),
    }
    semantic = tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()
    mapped = _in_dataset(lambda r, s: parser(Decoder(CATEGORIES, "semantic")(r), s), semantic, tf.constant([0, 0]))
    assert mapped["valid"].numpy().tolist() == [True, True, False, False]
    assert mapped["labels"][:2].numpy().tolist() == [1, 2]  # dog (9), sky (12)
    np.testing.assert_array_equal(mapped["masks"][1, :12].numpy(), segment_map == 1)
    np.testing.assert_array_equal(mapped["ignore_mask"][:12].numpy(), segment_map == 2)


def test_ade20k_recipe_shapes_and_present_classes():
    rng = np.random.default_rng(1)
    label = rng.choice(np.array([0, 3, 9], np.uint8), size=(40, 50))
    features = {
        fmt.IMAGE_ENCODED: _feature([fmt.encode_png(rng.integers(0, 255, (40, 50, 3), np.uint8))], "bytes"),
        fmt.SEMANTIC_ENCODED: _feature([fmt.encode_png(label)], "bytes"),
    }
    record = tf.constant(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    parser = TrainParser(image_size=(32, 32), max_instances=3, augmentation="ade20k", with_extras=True)
    for step in range(4):
        out = parser(Decoder(CATEGORIES, "semantic")(record), tf.constant([1, step], tf.int64))
        assert out["image"].shape == (32, 32, 3)
        assert 0.0 <= out["image"].numpy().min() and out["image"].numpy().max() <= 255.0
        assert out["labels"].numpy()[out["valid"].numpy()].tolist() == [0, 1]
        covered = out["masks"].numpy().sum(axis=0) + out["ignore_mask"].numpy()
        np.testing.assert_array_equal(covered, np.ones((32, 32)))  # every pixel: one class or ignore


def test_shortest_edge_jitter_uses_the_official_sizes_of_the_crops_longer_side():
    """Official ADE20K / Cityscapes: MIN_SIZE_TRAIN [int(x * 0.1 * S) for x in 5..20], MAX_SIZE_TRAIN 4 S,
    with S the crop's longer side (Cityscapes: 512 x 1024 crops, S = 1024)."""
    parser = TrainParser(image_size=(16, 32), max_instances=3, augmentation="ade20k")
    shortest = set()
    for step in range(200):
        seeds = tf.unstack(tf.random.experimental.stateless_split(tf.constant([5, step], tf.int64), 4))
        scaled, _, crop = parser._sample_window(tf.constant([100, 200]), seeds)
        shortest.add(int(scaled.numpy().min()))
        assert crop.numpy().tolist() == [16, 32]
    assert shortest == {int(x * 0.1 * 32) for x in range(5, 21)}  # 16 .. 64; every long side 2 x <= 4 x 32
    tall = [parser._sample_window(tf.constant([1000, 100]), [tf.constant([s, 0], tf.int64)] * 4)[0] for s in range(20)]
    assert max(int(t.numpy().max()) for t in tall) <= 4 * 32  # the longest side's limit


def test_eval_parser_resizes_and_pads_with_the_pixel_mean():
    image = np.full((30, 50, 3), 200, np.uint8)
    mean = (123.675, 116.28, 103.53)
    decoded = {"image": tf.constant(image), "source_id": tf.constant("7")}
    out = EvalParser(min_size=40, max_size=60, pixel_mean=mean)(decoded)
    # shortest edge 30 -> 40 makes the longest 66.7 > 60, so scale 60 / 50: 36 x 60, padded to 64 x 64.
    assert out["valid_size"].numpy().tolist() == [36, 60] and out["original_size"].numpy().tolist() == [30, 50]
    assert out["image"].shape == (64, 64, 3)
    np.testing.assert_allclose(out["image"][:36, :60].numpy(), 200.0, atol=1e-3)
    np.testing.assert_allclose(out["image"][36:].numpy(), np.broadcast_to(mean, (28, 64, 3)), atol=1e-4)
    fixed = EvalParser(min_size=40, max_size=60, pixel_mean=mean, fixed_size=(64, 96))(decoded)
    assert fixed["image"].shape == (64, 96, 3)


def _write_shards(tmp_path, records, num_shards=2):
    paths = [str(tmp_path / fmt.shard_path("train", i, num_shards)) for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    for i, record in enumerate(records):
        writers[i % num_shards].write(record)
    for w in writers:
        w.close()
    CATEGORIES.save(str(tmp_path / "categories.json"))
    return str(tmp_path / "train-*.tfrecord")


def _small_config(pattern, seed=3):
    config = Mask2FormerConfig()
    config.model.num_classes = 3
    config.data.train_files = config.data.val_files = pattern
    config.data.image_size = (64, 64)
    config.data.max_instances = 8
    config.data.shuffle_buffer = 4
    config.data.seed = seed
    config.data.min_size_test, config.data.max_size_test = 32, 48
    return config


def test_build_dataset_filters_empty_images_and_repeats_with_a_seed(tmp_path):
    records = []
    for n in range(6):
        image, masks, category_ids = random_instances(n % 3, seed=n)
        crowd = [n == 5] * len(category_ids)  # image 5 has only a crowd region: filtered like empty ones
        records.append(make_example(image, masks, category_ids, crowd, source_id=n))
    config = _small_config(_write_shards(tmp_path, records))
    dataset = build_dataset(config, "train", batch_size=2, with_extras=True)
    assert dataset.element_spec["masks"].shape == (2, 8, 64, 64)
    first = list(dataset.take(4).as_numpy_iterator())
    second = list(build_dataset(config, "train", batch_size=2, with_extras=True).take(4).as_numpy_iterator())
    seen = {int(s) for batch in first for s in batch["source_id"]}
    assert seen <= {1, 2, 4} and len(seen) == 3  # 0 and 3 are empty, 5 is crowd-only
    for a, b in zip(first, second, strict=True):
        for key in ("image", "masks", "labels", "valid"):
            np.testing.assert_array_equal(a[key], b[key])
    config.data.seed = 4
    other = list(build_dataset(config, "train", batch_size=2).take(4).as_numpy_iterator())
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(first, other, strict=True))

    val = list(build_dataset(config, "val").as_numpy_iterator())
    assert len(val) == 6 and all(v["image"].shape[0] % 32 == 0 and v["image"].shape[1] % 32 == 0 for v in val)
    batched = next(iter(build_dataset(config, "val", batch_size=3)))
    assert batched["image"].shape == (3, 64, 64, 3)


def test_build_dataset_errors_name_the_fix(tmp_path):
    config = _small_config(str(tmp_path / "nothing-*.tfrecord"))
    with pytest.raises(FileNotFoundError, match="convert_coco_to_tfrecord.py"):
        build_dataset(config, "train")
    pattern = _write_shards(tmp_path, [make_example(*random_instances(1), [False])])
    config = _small_config(pattern)
    config.model.num_classes = 80
    with pytest.raises(ValueError, match="model.num_classes=3"):
        build_dataset(config, "train")


def test_test_dataset_program_renders_samples(tmp_path):
    import test_dataset

    records = [make_example(*random_instances(3, seed=n), [False, True, False], source_id=n) for n in range(2)]
    pattern = _write_shards(tmp_path, records)
    common = ["--preset", "coco_instance", "--set", f"data.train_files={pattern}", "model.num_classes=3"]
    common += ["data.image_size=[64,64]", "data.max_instances=4"]
    for extra in ([], ["--raw"]):
        out = tmp_path / ("raw" if extra else "augmented")
        assert test_dataset.main(["--num_samples", "2", "--output_dir", str(out), *extra, *common]) == 0
        rendered = [cv2.imread(str(out / f"sample_{n:03d}.png")) for n in range(2)]
        assert all(r is not None and r.shape == ((64, 64, 3) if not extra else (24, 32, 3)) for r in rendered)


def test_test_dataset_program_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    """Unknown, mistyped and contradictory --set, a config that is not JSON, no or empty shards: exit 2."""
    import cli
    import test_dataset

    pattern = _write_shards(tmp_path, [make_example(*random_instances(1), [False])])
    empty = tmp_path / "empty"
    empty.mkdir()
    for i in range(2):
        (empty / fmt.shard_path("train", i, 2)).write_bytes(b"")
    (empty / "categories.json").write_text((tmp_path / "categories.json").read_text())
    (tmp_path / "bad.json").write_text("{not json")
    data = ["--set", f"data.train_files={pattern}", "model.num_classes=3"]
    cases = [
        (["--set", "train.batch_sise=4"], "unknown config key 'train.batch_sise'"),
        (["--set", "train.batch_size=four"], "train.batch_size='four' is not a valid value"),
        (["--set", "train.batch_size=6", "train.accumulation_steps=4"], "train.batch_size (6) must be divisible"),
        (["--config", str(tmp_path / "bad.json")], f"config file {tmp_path / 'bad.json'} is not valid JSON"),
        (["--set", f"data.train_files={tmp_path / 'none-*.tfrecord'}", "model.num_classes=3"], "none-*.tfrecord"),
        (["--set", f"data.train_files={empty / 'train-*.tfrecord'}", "model.num_classes=3"], "holds no usable records"),
        ([*data, "--num-samples", "0"], "--num_samples must be >= 1"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        assert cli.run(test_dataset.main, ["--output-dir", str(out), "--raw", *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, (extra, err)
        assert not out.exists()


def test_bucketed_batches_hold_the_real_targets_in_few_slot_counts(tmp_path):
    """bucket_instances: each batch's slots are the smallest of 1, 2, 4, 8 holding its targets, with the
    same targets (and images) as the fixed data.max_instances batches, and no image padded to 8 on the way."""
    from data.pipeline import instance_bucket, instance_buckets

    assert instance_buckets(8) == [1, 2, 4, 8] and instance_buckets(6) == [1, 2, 4, 6]
    assert [instance_bucket(n, 6) for n in (0, 1, 3, 5, 9)] == [1, 1, 4, 6, 6]
    records = [make_example(*random_instances(n % 4 + 1, seed=n), [False] * (n % 4 + 1), source_id=n) for n in range(6)]
    config = _small_config(_write_shards(tmp_path, records))
    fixed = list(build_dataset(config, "train", batch_size=2, with_extras=True).take(6).as_numpy_iterator())
    bucketed = build_dataset(config, "train", batch_size=2, with_extras=True, bucket_instances=True)
    assert bucketed.element_spec["masks"].shape.as_list() == [2, None, 64, 64]
    for a, b in zip(fixed, bucketed.take(6).as_numpy_iterator(), strict=True):
        slots = b["valid"].shape[1]
        assert slots == instance_bucket(int(a["valid"].sum(axis=1).max()), 8), (slots, a["valid"].sum(axis=1))
        np.testing.assert_array_equal(a["image"], b["image"])
        for key in ("masks", "labels", "valid", "boxes"):
            np.testing.assert_array_equal(a[key][:, :slots], b[key], err_msg=key)
            assert not a[key][:, slots:].any(), key

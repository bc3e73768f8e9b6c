"""Export: the in-graph pre- and post-processing equal test.py's, and every format equals the Keras model.

Fast: the TensorFlow resize equals Pillow bit for bit; the TensorFlow post-processing equals
inference/postprocess.py on the same logits (instance, panoptic, semantic).
Slow (one export each, in its own runtime): the SavedModel loaded in a fresh interpreter without the
project on sys.path, LiteRT's interpreter and onnxruntime on 3 real photos of different sizes.
"""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, SHARED_TESTDATA
from PIL import Image

from inference import export
from inference.postprocess import PostProcessor

PHOTOS = [
    SHARED_TESTDATA / "labelme/examples/instance_segmentation/data_annotated/2011_000003.jpg",  # 500 x 338
    SHARED_TESTDATA / "labelme/examples/instance_segmentation/data_annotated/2011_000006.jpg",  # 500 x 375
    SHARED_TESTDATA / "panopticapi/sample_data/input_images/000000142238.jpg",  # 640 x 427
]
needs_photos = pytest.mark.skipif(not all(p.exists() for p in PHOTOS), reason="shared/testdata photos not present")
MIN_SIZE, MAX_SIZE = 160, 267  # tiny test-time sizes keep the tiny model fast


def test_resize_equals_pillow_bit_for_bit():
    """Random sizes (up and down, each axis, ties of the pass-order rule) and the official 800/1333 sizes."""
    rng = np.random.default_rng(0)
    resize = tf.function(
        export.pil_resize_bilinear,
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int32)],
    )
    cases = [tuple(rng.integers(1, 90, 2)) + tuple(rng.integers(1, 180, 2)) for _ in range(150)]
    cases += [(20, 10, 10, 5), (40, 30, 20, 20), (7, 9, 7, 9), (427, 640, 800, 1199), (2000, 1500, 1067, 800)]
    worst = 0
    for height, width, out_h, out_w in cases:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(image).resize((int(out_w), int(out_h)), Image.BILINEAR))
        got = resize(image, np.array([out_h, out_w], np.int32)).numpy()
        worst = max(worst, int(np.abs(got.astype(int) - expected).max()))
    print(f"max |TF - Pillow| over {len(cases)} size pairs: {worst}")
    assert worst == 0


@needs_photos
def test_decode_and_test_resize_equal_test_py():
    from inference.predictor import read_image, resize_for_test

    for path in PHOTOS:
        decoded = export.decode_image(tf.io.read_file(str(path))).numpy()
        np.testing.assert_array_equal(decoded, read_image(str(path)))
        resized = export.resize_for_test(tf.constant(decoded), 800, 1333).numpy()
        np.testing.assert_array_equal(resized, resize_for_test(decoded, 800, 1333))


def _random_outputs(rng, num_queries=12, num_classes=5, size=(12, 16), confident=True):
    """Logits with some confident queries (so panoptic keeps segments) and mask logits around 0."""
    class_logits = rng.normal(0, 1, (num_queries, num_classes + 1)).astype(np.float32)
    if confident:
        class_logits[np.arange(0, num_queries, 2), rng.integers(0, num_classes, num_queries // 2)] += 6.0
    mask_logits = rng.normal(-3, 1, (num_queries, *size)).astype(np.float32)
    for query in range(num_queries):  # a positive rectangle each, overlapping others
        y0, x0 = rng.integers(0, size[0] - 2), rng.integers(0, size[1] - 2)
        mask_logits[query, y0 : y0 + rng.integers(2, size[0]), x0 : x0 + rng.integers(2, size[1])] += 6.0
    return class_logits, mask_logits


@pytest.mark.parametrize("task", ["instance", "panoptic", "semantic"])
def test_tf_postprocessing_equals_postprocess_py(task):
    """Same logits -> ServingFunctions' TF post-processing == PostProcessor (numpy / keras.ops)."""
    rng = np.random.default_rng(1)
    isthing = np.array([True, True, False, True, False])
    settings = export.ExportSettings(task=task, isthing=tuple(isthing), instances_per_image=20)
    checked = 0
    for trial in range(6):
        class_logits, mask_logits = _random_outputs(rng, confident=trial != 0)
        padded_size = (4 * mask_logits.shape[1], 4 * mask_logits.shape[2])
        image_size, original_size = (padded_size[0] - 5, padded_size[1] - 9), (70 + trial, 41 + 3 * trial)
        expected = PostProcessor(task, isthing=isthing, instances_per_image=20).one_image(
            class_logits, mask_logits, padded_size, image_size, original_size
        )
        got = _tf_postprocess(settings, class_logits, mask_logits, padded_size, image_size, original_size)
        if task == "instance":
            n = int(got["num_instances"])
            assert n == len(expected.scores)
            np.testing.assert_array_equal(got["masks"][:n].astype(bool), expected.masks)
            np.testing.assert_array_equal(got["classes"][:n], expected.labels)
            np.testing.assert_allclose(got["scores"][:n], expected.scores, rtol=0, atol=1e-7)
            np.testing.assert_array_equal(got["boxes"][:n], expected.boxes)
            assert (got["classes"][n:] == -1).all()
            checked += n
        elif task == "panoptic":
            np.testing.assert_array_equal(got["segment_ids"], expected.segment_ids)
            n = int(got["num_segments"])
            assert n == len(expected.segments)
            np.testing.assert_array_equal(got["segment_classes"][:n], [s["category"] for s in expected.segments])
            np.testing.assert_array_equal(got["segment_isthing"][:n], [s["isthing"] for s in expected.segments])
            np.testing.assert_allclose(got["segment_scores"][:n], [s["score"] for s in expected.segments], atol=1e-7)
            checked += n
        else:
            np.testing.assert_array_equal(got["labels"], expected.labels)
            checked += len(np.unique(expected.labels))
    print(f"{task}: {checked} instances / segments / classes equal")
    assert checked > 6  # the cases are not trivially empty


def _tf_postprocess(settings, class_logits, mask_logits, padded_size, image_size, original_size):
    """The post-processing half of ServingFunctions.predict_one, on given logits."""
    functions = export.ServingFunctions(_FakeModel(*class_logits.shape), settings)
    mask_logits = tf.constant(mask_logits)
    if settings.task == "semantic":
        padded = export._resize_channels_first(mask_logits, padded_size)
        result = export.semantic_outputs(tf.constant(class_logits), padded, image_size, original_size)
    else:
        masks = export._at_original_size(mask_logits, padded_size, image_size, original_size)
        if settings.task == "panoptic":
            result = export.panoptic_outputs(tf.constant(class_logits), masks, functions.isthing, 0.8, 0.8)
        else:
            things = None if functions.isthing.all() else functions.isthing
            result = export.instance_outputs(tf.constant(class_logits), masks, settings.instances_per_image, things)
    return {k: v.numpy() for k, v in result.items()}


class _FakeModel:
    def __init__(self, num_queries, num_classes_plus_one):
        self.num_queries, self.num_classes = num_queries, num_classes_plus_one - 1


def test_cli_refuses_bad_arguments_in_one_sentence(tmp_path):
    from tools.export import parse_args

    with pytest.raises(SystemExit):
        parse_args(["m.keras", "out.tflite", "--format", "litert"])  # LiteRT needs --size
    with pytest.raises(SystemExit):
        parse_args(["m.keras", "out", "--format", "onnx", "--precision", "float16"])
    with pytest.raises(SystemExit):
        parse_args(["m.keras", "out", "--format", "litert", "--size", "800by1216"])
    args = parse_args(["m.keras", "out.tflite", "--format", "litert", "--size", "160x256", "--precision", "float16"])
    assert args.size == (160, 256)
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools/export.py"), str(tmp_path / "missing.keras"), str(tmp_path / "o"),
         "--format", "saved_model"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0 and result.stderr.strip().startswith("error: ")
    assert "missing.keras does not exist" in result.stderr and "Traceback" not in result.stderr

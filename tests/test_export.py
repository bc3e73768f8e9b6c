"""Export: the in-graph pre- and post-processing equal test.py's, and every format equals the Keras model.

Fast: the TensorFlow resize equals Pillow bit for bit; the TensorFlow post-processing equals
inference/postprocess.py on the same logits (instance, panoptic, semantic).
Slow (one export each, in its own runtime): the SavedModel loaded in a fresh interpreter that cannot
import the project, LiteRT's interpreter and onnxruntime on 3 real photos of different sizes.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, SHARED_TESTDATA
from PIL import Image

from data.resize import pil_resize_bilinear
from inference import export
from inference.postprocess import PostProcessor, crop_and_resize, resize_bilinear

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
        pil_resize_bilinear,
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
        padded = resize_bilinear(mask_logits, padded_size)
        result = export.semantic_outputs(tf.constant(class_logits), padded, image_size, original_size)
    else:
        masks = crop_and_resize(resize_bilinear(mask_logits, padded_size), image_size, original_size)
        if settings.task == "panoptic":
            result = export.panoptic_outputs(tf.constant(class_logits), masks, functions.isthing, 0.8, 0.8)
        else:
            things = None if functions.isthing.all() else functions.isthing
            result = export.instance_outputs(tf.constant(class_logits), masks, settings.instances_per_image, things)
    return {k: v.numpy() for k, v in result.items()}


class _FakeModel:
    def __init__(self, num_queries, num_classes_plus_one):
        self.num_queries, self.num_classes = num_queries, num_classes_plus_one - 1


def test_cli_refuses_bad_arguments_in_one_sentence(capsys):
    from tools.export import parse_args

    with pytest.raises(SystemExit):
        parse_args(["m.keras", "out.tflite", "--format", "litert"])  # LiteRT needs --size
    with pytest.raises(SystemExit):
        parse_args(["m.keras", "out", "--format", "onnx", "--size", "64x64", "--precision", "float16"])
    with pytest.raises(SystemExit):
        parse_args(["m.keras", "out.onnx", "--format", "onnx", "--dynamic"])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--dynamic is not supported for --format onnx" in message and "--size HxW" in message
    with pytest.raises(SystemExit):
        parse_args(["m.keras", "out", "--format", "litert", "--size", "800by1216"])
    args = parse_args(["m.keras", "out.tflite", "--format", "litert", "--size", "160x256", "--precision", "float16"])
    assert args.size == (160, 256)  # a missing model, run as a user runs it: tests/test_cli.py


# ------------------------------------------------------------------------------------ slow: formats
FRESH_PROCESS = textwrap.dedent(
    """
    # Runs in `python -I` from an empty folder: TensorFlow only, the project is not importable.
    import json, sys
    import numpy as np
    import tensorflow as tf
    try:
        import model  # noqa: F401
        sys.exit("the project is importable in the fresh process")
    except ImportError:
        pass
    saved_model, photos, arrays, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    loaded = tf.saved_model.load(saved_model)
    serve = loaded.signatures["serving_default"]
    encoded = [open(p, "rb").read() for p in photos]
    results = {}
    batch = serve(images=tf.constant(encoded))  # all photos in one call
    results.update({"batch_" + k: v.numpy() for k, v in batch.items()})
    for i, data in enumerate(encoded):  # each alone
        results.update({f"alone{i}_" + k: v.numpy() for k, v in serve(images=tf.constant([data])).items()})
    inputs = np.load(arrays)
    for i in range(len(photos)):
        logits = loaded.signatures["logits"](images=tf.constant(inputs[f"image{i}"]))
        results.update({f"logits{i}_" + k: v.numpy() for k, v in logits.items()})
    np.savez(out, **results)
    """
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Tiny seeded model (.keras written for test.py) and its config with tiny test sizes."""
    import keras

    from model import build_model
    from tests.helpers import tiny_config

    config = tiny_config()
    config.data.min_size_test, config.data.max_size_test = MIN_SIZE, MAX_SIZE
    keras.utils.set_random_seed(0)
    network = build_model(config)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    network.save(str(path))
    return network, config, path


def _network_inputs(photos, size=None, pixel_mean=None):
    """Each photo decoded and resized as test.py does: (1, h, w, 3) float32; with `size`, placed top-left
    on a (1, *size, 3) canvas of `pixel_mean` (how test.py pads a batch), for fixed-size runtimes."""
    from inference.predictor import read_image, resize_for_test

    inputs = []
    for path in photos:
        resized = resize_for_test(read_image(str(path)), MIN_SIZE, MAX_SIZE)
        canvas = np.empty((1, *(size or resized.shape[:2]), 3), np.float32)
        canvas[...] = np.asarray(pixel_mean if size else 0, np.float32)
        canvas[0, : resized.shape[0], : resized.shape[1]] = resized
        inputs.append(canvas)
    return inputs


def _worst(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.mark.slow
@needs_photos
def test_saved_model_in_a_fresh_process_equals_keras_and_test_py(tiny_model, tmp_path):
    """Acceptance 1 (SavedModel), 2 (test.py's JSON) and 3 (an image alone or batched) in one export."""
    network, config, keras_path = tiny_model
    saved = tmp_path / "saved_model"
    export.export_saved_model(network, str(saved), export.ExportSettings.from_config(config))
    inputs = _network_inputs(PHOTOS)
    np.savez(tmp_path / "inputs.npz", **{f"image{i}": x for i, x in enumerate(inputs)})
    (tmp_path / "fresh").mkdir()
    script = tmp_path / "fresh" / "run.py"
    script.write_text(FRESH_PROCESS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(  # TensorFlow's defaults (grappler on), as TF Serving runs it
        [sys.executable, "-I", str(script), str(saved), json.dumps([str(p) for p in PHOTOS]),
         str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        cwd=tmp_path / "fresh", env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")

    # 1. the logits signature equals the Keras model
    worst = 0.0
    for i, x in enumerate(inputs):
        expected = network(x, training=False)
        for key in ("pred_logits", "pred_masks"):
            assert out[f"logits{i}_{key}"].shape == expected[key].shape
            worst = max(worst, _worst(out[f"logits{i}_{key}"], expected[key]))
    print(f"SavedModel logits vs Keras: max abs diff {worst:.2e}")
    assert worst < 1e-4

    # 3. alone vs in a batch with larger images: identical masks, scores within 1e-5
    for i in range(len(PHOTOS)):
        height, width = out[f"alone{i}_image_sizes"][0]
        alone_masks, batch_masks = out[f"alone{i}_masks"][0], out["batch_masks"][i]
        np.testing.assert_array_equal(batch_masks[:, :height, :width], alone_masks)
        assert not batch_masks[:, height:].any() and not batch_masks[:, :, width:].any()
        np.testing.assert_allclose(out["batch_scores"][i], out[f"alone{i}_scores"][0], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(out["batch_classes"][i], out[f"alone{i}_classes"][0])

    # 2. test.py's JSON for the same images and model (one image per call: test.py's own batching is
    # not under test here): same RLEs, scores within 1e-5, both under TensorFlow's defaults. test.py
    # runs the network as one graph for any shape (CompiledModel "function"), the SavedModel's graph;
    # a graph traced at a fixed shape would differ by ~1e-6 (constant folding) and flip mask pixels.
    from evaluation.coco import encode_masks

    images = tmp_path / "images"
    images.mkdir()
    for path in PHOTOS:
        os.symlink(path, images / path.name)
    run = subprocess.run(
        [sys.executable, str(ROOT / "test.py"), "--model", str(keras_path), "--images", str(images),
         "--output", str(tmp_path / "res"), "--score-threshold", "0", "--batch-size", "1",
         "--set", f"data.min_size_test={MIN_SIZE}", f"data.max_size_test={MAX_SIZE}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    compared, worst_score = 0, 0.0
    for index, path in enumerate(PHOTOS):
        record = json.loads((tmp_path / "res" / f"{path.stem}.json").read_text())
        height, width = out["batch_image_sizes"][index]
        n = int(out["batch_num_instances"][index])
        masks = out["batch_masks"][index, :n, :height, :width].astype(bool)
        chosen = masks.any(axis=(1, 2))  # test.py writes non-empty masks scoring >= the threshold (0)
        scores = out["batch_scores"][index, :n][chosen]
        category_ids = out["batch_category_ids"][index, :n][chosen]
        assert len(record["instances"]) == int(chosen.sum())
        for entry, rle, score, category_id in zip(
            record["instances"], encode_masks(masks[chosen]), scores, category_ids, strict=True
        ):
            assert entry["segmentation"] == rle
            assert entry["category_id"] == int(category_id)
            worst_score = max(worst_score, abs(entry["score"] - float(score)))
            compared += 1
    print(f"test.py JSON vs SavedModel (TF defaults): {compared} instances, all RLEs equal, "
          f"scores within {worst_score:.1e}")  # fmt: skip
    assert compared > 0 and worst_score <= 1e-5


LITERT_SIZE = (192, 288)  # the tiny test sizes' largest resized photo (160 x 237) padded to multiples of 32


def _litert_run(path, inputs):
    """ai-edge-litert interpreter on each (1, H, W, 3) input -> list of {pred_logits, pred_masks}."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    runner = interpreter.get_signature_runner()
    return [runner(images=x) for x in inputs]


@pytest.mark.slow
@needs_photos
def test_litert_float32_and_float16_equal_keras(tiny_model, tmp_path):
    network, config, _ = tiny_model
    inputs = _network_inputs(PHOTOS, LITERT_SIZE, config.model.pixel_mean)
    expected = [network(x, training=False) for x in inputs]
    export.export_litert(network, str(tmp_path / "m.tflite"), LITERT_SIZE, "float32")
    worst = 0.0
    for got, want in zip(_litert_run(tmp_path / "m.tflite", inputs), expected, strict=True):
        for key in ("pred_logits", "pred_masks"):
            worst = max(worst, _worst(got[key], want[key]))
    print(f"LiteRT float32 vs Keras: max abs diff {worst:.2e}")
    assert worst < 1e-4

    export.export_litert(network, str(tmp_path / "m16.tflite"), LITERT_SIZE, "float16")
    postprocess = PostProcessor("instance", instances_per_image=10)
    ious = []
    for path, got, want in zip(PHOTOS, _litert_run(tmp_path / "m16.tflite", inputs), expected, strict=True):
        original = Image.open(path).size[::-1]
        image_size = _network_inputs([path])[0].shape[1:3]
        ours = postprocess(got, [image_size], [original])[0]
        keras_result = postprocess(
            {k: want[k].numpy() for k in ("pred_logits", "pred_masks")}, [image_size], [original]
        )[0]
        assert sorted(ours.labels.tolist()) == sorted(keras_result.labels.tolist())
        for label, query, mask in zip(ours.labels, ours.queries, ours.masks, strict=True):
            match = (keras_result.labels == label) & (keras_result.queries == query)
            reference = keras_result.masks[np.argmax(match)]
            union = (mask | reference).sum()
            ious.append((mask & reference).sum() / union if union else 1.0)
    print(f"LiteRT float16: same instance classes, mask IoU min {min(ious):.4f} over {len(ious)} masks")
    assert min(ious) >= 0.95


@pytest.mark.slow
@needs_photos
def test_onnx_equals_keras(tiny_model, tmp_path):
    """Fixed size, as LiteRT (free height and width fail in onnxruntime: see tools/export.py)."""
    import onnx
    import onnxruntime

    network, config, _ = tiny_model
    export.export_onnx(network, str(tmp_path / "m.onnx"), size=LITERT_SIZE)
    model_proto = onnx.load(str(tmp_path / "m.onnx"))
    opset = max(entry.version for entry in model_proto.opset_import if entry.domain in ("", "ai.onnx"))
    assert opset >= 17
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    worst = 0.0
    for x in _network_inputs(PHOTOS, LITERT_SIZE, config.model.pixel_mean):
        got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))
        want = network(x, training=False)
        for key in ("pred_logits", "pred_masks"):
            worst = max(worst, _worst(got[key], want[key]))
    print(f"ONNX (opset {opset}) vs Keras: max abs diff {worst:.2e}")
    assert worst < 1e-4

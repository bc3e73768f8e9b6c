"""One test-time resize for everyone: detectron2's ResizeShortestEdge (PIL bilinear on uint8).

`inference.predictor.resize_for_test` calls PIL itself; `data.parser.EvalParser` (TFRecord evaluation)
reimplements Pillow's fixed-point two-pass bilinear in TensorFlow. Both must give PIL's pixels exactly,
eagerly and inside tf.data, upscaling and downscaling, and the same output size rule.
"""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data.parser import EvalParser
from data.resize import pil_resize_bilinear as pil_bilinear_resize
from data.resize import shortest_edge_size as eval_resized_size
from inference.predictor import resize_for_test, resized_shape

CASES = [  # (height, width, min_size, max_size)
    (37, 53, 800, 1333),  # upscale x21
    (480, 640, 800, 1333),
    (1000, 1500, 800, 1333),  # downscale by 1.25: many exact .5 ties in the weights
    (333, 517, 64, 128),  # downscale x5
    (100, 1000, 800, 1333),  # long side capped
    (64, 80, 64, 128),  # unchanged
    (5, 3, 512, 2048),
]


def pil_reference(image, size):
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


@pytest.mark.parametrize("height, width, min_size, max_size", CASES)
def test_both_resizes_give_pil_pixels_exactly(height, width, min_size, max_size):
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), np.uint8)
    size = resized_shape(height, width, min_size, max_size)
    assert tuple(eval_resized_size(height, width, min_size, max_size).numpy()) == size
    expected = pil_reference(image, size)
    np.testing.assert_array_equal(resize_for_test(image, min_size, max_size), expected)
    np.testing.assert_array_equal(pil_bilinear_resize(tf.constant(image), tf.constant(size)).numpy(), expected)


def test_eval_parser_in_tf_data_equals_the_predictor_input():
    """Records and image files reach the model with the same pixels (and the same valid size)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, np.uint8) for shape in ((37, 53, 3), (90, 61, 3), (200, 150, 3))]
    parser = EvalParser(min_size=64, max_size=100, pixel_mean=(123.675, 116.28, 103.53))
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=tf.TensorSpec([None, None, 3], tf.uint8)
    ).map(lambda image: parser({"image": image, "source_id": tf.constant("x")}))
    for image, parsed in zip(images, dataset.as_numpy_iterator(), strict=True):
        resized = resize_for_test(image, 64, 100)
        height, width = parsed["valid_size"]
        assert (height, width) == resized.shape[:2]
        assert parsed["image"].shape[0] % 32 == 0 and parsed["image"].shape[1] % 32 == 0
        np.testing.assert_array_equal(parsed["image"][:height, :width], resized.astype(np.float32))

"""Running a model on images: reading, the official test-time resize, batching, post-processing.

    predictor = Predictor(model, config, isthing=categories.isthing)
    results = predictor([read_image("a.jpg"), read_image("b.png")])   # one result per image

Test-time input as in the official model (detectron2 `ResizeShortestEdge(800, 1333)`, PIL bilinear):
the shorter side becomes `config.data.min_size_test` unless the longer side would pass
`max_size_test`. Images of a batch are padded bottom/right with `model.pixel_mean` to a common size
(the model normalises and pads to a multiple of 32 itself, so this equals detectron2's zero padding
after normalisation). Results come back at each image's original size.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from inference.image_check import warn_if_truncated
from inference.postprocess import PostProcessor


def read_image(path: str) -> np.ndarray:
    """Any image file OpenCV reads -> (H, W, 3) uint8 RGB; EXIF orientation applied, gray / RGBA converted."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # honours EXIF orientation, drops alpha, expands gray
    if image is None:
        raise ValueError(f"cannot read image {path}; it is missing, empty or not an image format OpenCV knows")
    warn_if_truncated(str(path))  # OpenCV fills a truncated JPEG with grey without an error
    return np.ascontiguousarray(image[..., ::-1])


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """detectron2 `ResizeShortestEdge.get_output_shape`: (height, width) after the test-time resize."""
    scale = min_size / min(height, width)
    new_height, new_width = (min_size, scale * width) if height < width else (scale * height, min_size)
    if max(new_height, new_width) > max_size:
        scale = max_size / max(new_height, new_width)
        new_height, new_width = new_height * scale, new_width * scale
    return int(new_height + 0.5), int(new_width + 0.5)


def resize_for_test(image: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> resized uint8 with PIL bilinear, as detectron2's `ResizeTransform`."""
    height, width = resized_shape(*image.shape[:2], min_size, max_size)
    if (height, width) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def pad_batch(images: list[np.ndarray], pad_value) -> np.ndarray:
    """List of (h_i, w_i, 3) -> (B, max h, max w, 3) float32, padded bottom/right with `pad_value` (RGB)."""
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    batch = np.empty((len(images), height, width, 3), np.float32)
    batch[...] = np.asarray(pad_value, np.float32)
    for i, image in enumerate(images):
        batch[i, : image.shape[0], : image.shape[1]] = image
    return batch


class Predictor:
    """Model + test-time resize + post-processing of one task.

    Args:
        model: callable `model(images, training=False)` -> {"pred_logits", "pred_masks"} (the model contract).
        config: `Mask2FormerConfig` (test sizes, pixel mean, inference section).
        isthing: bool per contiguous class (from `Categories.isthing`); None = all things.
        task: overrides `config.inference.task`.
    """

    def __init__(self, model, config, isthing=None, task: str | None = None):
        self.model = model
        self.min_size = config.data.min_size_test
        self.max_size = config.data.max_size_test
        self.pixel_mean = config.model.pixel_mean
        self.postprocess = PostProcessor.from_config(config, isthing=isthing, task=task)

    def __call__(self, images: list[np.ndarray]) -> list:
        """Original (H, W, 3) uint8 RGB images (one batch) -> their results at the original sizes."""
        resized = [resize_for_test(image, self.min_size, self.max_size) for image in images]
        outputs = self.model(pad_batch(resized, self.pixel_mean), training=False)
        return self.postprocess(outputs, [image.shape[:2] for image in resized], [image.shape[:2] for image in images])

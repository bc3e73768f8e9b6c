"""Overlay labels scale with the image: a tag covers the same share of a 12-megapixel photo as of a small one."""

import numpy as np

from inference.postprocess import InstanceResult
from inference.visualize import draw_instances, text_style


def _tag_height(size: int) -> float:
    """Height of the tag drawn on a size x size image with one full-image instance, as a share of the image."""
    image = np.zeros((size, size, 3), np.uint8)
    masks = np.zeros((1, size, size), bool)
    masks[0, size // 2 :, size // 2 :] = True  # the tag sits above the box's top-left corner
    result = InstanceResult(
        masks=masks,
        scores=np.array([0.9], np.float32),
        labels=np.array([0]),
        queries=np.array([0]),
        boxes=np.array([[size // 2, size // 2, size, size]], np.float32),
    )
    drawn = draw_instances(image, result, ["person"])
    column = drawn[: size // 2, size // 2 + 1]  # above the box: only the tag is drawn there
    rows = np.nonzero(column.any(axis=1))[0]
    return (rows.max() - rows.min() + 1) / size


def test_label_height_is_a_constant_share_of_the_image():
    shares = {size: _tag_height(size) for size in (1000, 2000, 4000)}
    assert max(shares.values()) / min(shares.values()) < 1.15, shares
    assert 0.015 < shares[4000] < 0.05, shares  # readable when the photo is viewed whole
    assert text_style((100, 120, 3))[0] == 0.4  # small images keep a legible minimum

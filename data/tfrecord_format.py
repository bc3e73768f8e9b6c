"""The TFRecord layout shared by the converter and the decoder.

Keys follow TF Model Garden (`official/vision/data/create_coco_tf_record.py`) where one exists.
Two deliberate differences, both so that nothing overflows at 256 instances:
  - `image/panoptic/instance_mask` is a 16-bit PNG whose pixel value is 1 + the segment's position
    in the `image/panoptic/segments/*` lists (0 = void), for things AND stuff; Model Garden's is an
    8-bit PNG numbering things only.
  - `image/panoptic/segments/*` (ours) keep each segment's original id, dataset category id, crowd
    flag and area, so that a record holds everything training and panoptic evaluation need.

Instance objects (`image/object/*`) keep the dataset's own category ids; the contiguous class index
comes from `categories.json` at training time. Object masks are one 8-bit PNG per object with
values 0/1. Semantic labels (`image/segmentation/class/encoded`) are the dataset's label PNG as is.
"""

from __future__ import annotations

import cv2
import numpy as np

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_FILENAME = "image/filename"
IMAGE_SOURCE_ID = "image/source_id"

OBJECT_XMIN = "image/object/bbox/xmin"  # normalised to [0, 1]
OBJECT_XMAX = "image/object/bbox/xmax"
OBJECT_YMIN = "image/object/bbox/ymin"
OBJECT_YMAX = "image/object/bbox/ymax"
OBJECT_LABEL = "image/object/class/label"  # dataset category id
OBJECT_IS_CROWD = "image/object/is_crowd"
OBJECT_AREA = "image/object/area"
OBJECT_MASK = "image/object/mask"  # one PNG per object, values 0/1

PANOPTIC_CATEGORY_MASK = "image/panoptic/category_mask"  # PNG of dataset category ids (0 = void)
PANOPTIC_INSTANCE_MASK = "image/panoptic/instance_mask"  # 16-bit PNG: 1 + segment position (0 = void)
SEGMENT_ID = "image/panoptic/segments/id"  # the panoptic PNG's original id (R + 256 G + 256^2 B)
SEGMENT_LABEL = "image/panoptic/segments/class/label"
SEGMENT_IS_CROWD = "image/panoptic/segments/is_crowd"
SEGMENT_AREA = "image/panoptic/segments/area"

SEMANTIC_ENCODED = "image/segmentation/class/encoded"  # label PNG, pixel = dataset category id
SEMANTIC_FORMAT = "image/segmentation/class/format"

MAX_PANOPTIC_SEGMENTS = 65535  # 16-bit instance mask, 0 = void


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8 or uint16 array (uint16 gives a 16-bit PNG)."""
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"could not PNG-encode an array of shape {array.shape} and dtype {array.dtype}")
    return buffer.tobytes()


def shard_path(prefix: str, index: int, num_shards: int) -> str:
    """Model Garden's shard naming: PREFIX-00000-of-00008.tfrecord."""
    return f"{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord"

"""A tiny drawn COCO dataset converted to TFRecords with the repository's converter (training tests)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

import convert_coco_to_tfrecord
from tests.helpers import tiny_config

CLASS_COLOURS = ((230, 40, 40), (40, 200, 60))  # class 0 squares, class 1 discs


def write_synthetic_tfrecords(folder: Path, num_images: int = 4, size: int = 64, num_shards: int = 2, seed: int = 0):
    """Draws `num_images` RGB PNGs with 1-3 coloured squares / discs each, writes COCO JSON, converts.

    Returns the TFRecord file pattern (categories.json lies beside the shards).
    """
    rng = np.random.default_rng(seed)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}]}
    for image_id in range(1, num_images + 1):
        image = np.full((size, size, 3), 90, np.uint8) + rng.integers(0, 20, (size, size, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            label = int(rng.integers(0, 2))
            half = int(rng.integers(size // 10, size // 5))
            cx, cy = (int(v) for v in rng.integers(half, size - half, 2))
            mask = np.zeros((size, size), np.uint8)
            if label == 0:
                mask[cy - half : cy + half, cx - half : cx + half] = 1
            else:
                cv2.circle(mask, (cx, cy), half, 1, -1)
            image[mask > 0] = CLASS_COLOURS[label]
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            polygon = contours[0].reshape(-1).astype(float).tolist()
            x, y, w, h = cv2.boundingRect(mask)
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "segmentation": [polygon],
                    "bbox": [x, y, w, h],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                }
            )
        name = f"{image_id:04d}.png"
        cv2.imwrite(str(images_dir / name), image[..., ::-1])
        coco["images"].append({"id": image_id, "file_name": name, "height": size, "width": size})
    annotations = folder / "instances.json"
    annotations.write_text(json.dumps(coco))
    prefix = folder / "records" / "train"
    argv = ["--image_dir", str(images_dir), "--object_annotations_file", str(annotations)]
    argv += ["--output_file_prefix", str(prefix), f"--num_shards={num_shards}", "--num_workers=1"]
    assert convert_coco_to_tfrecord.main(argv) == 0
    return str(folder / "records" / "train-*.tfrecord")


def training_config(train_files: str, output_dir: str, **train_overrides):
    """A CPU-sized training config: tiny model with 3 prediction sets, 64x64 crops, 4 target slots."""
    config = tiny_config(num_classes=2, num_decoder_layers=2, encoder_layers=1)
    config.data.train_files = train_files
    config.data.image_size = (64, 64)
    config.data.scale_range = (0.8, 1.25)
    config.data.max_instances = 4
    config.data.shuffle_buffer = 8
    config.data.seed = 7
    config.loss.num_points = 64
    config.train.batch_size = 2
    config.train.max_steps = 6
    config.train.mixed_precision = "float32"
    config.train.backbone_weights = ""
    config.train.output_dir = output_dir
    config.train.checkpoint_every = 2
    config.train.log_every = 1
    for key, value in train_overrides.items():
        setattr(config.train, key, value)
    return config.validate()

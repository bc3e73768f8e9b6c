"""Renders what the model is fed: N training samples after augmentation, or the raw decoded records.

    python test_dataset.py --num_samples 8 --set data.train_files=datasets/coco/tfrecords/train-*.tfrecord
    python test_dataset.py --raw --num_samples 8 --preset coco_panoptic --set data.train_files=...

Writes images/dataset_test/sample_000.png, ...: each target mask in its own colour with its class name,
crowd and ignore regions (and the padding) shaded grey with diagonal stripes. It prints one line per
image (source id, number of targets, their classes). `--raw` shows the decoded record before any
augmentation, crowd regions included (shaded). Exit status: 0 done, 2 bad input (one line: unknown or
contradictory `--set`, a config that is not JSON, no records or empty shards).
"""

from __future__ import annotations

import os
import sys

import cli


def _colour(index: int):
    """A bright, distinct colour per index (golden-angle hues), float32 RGB."""
    import cv2
    import numpy as np

    hsv = np.array([[[int(index * 137.5) % 180, 200, 255]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def render(image, masks, names: list[str], ignore):
    """uint8 RGB (H, W, 3): masks tinted and outlined with their names (text scaled with the image); ignore
    shaded with stripes. image (H, W, 3), masks (N, H, W), ignore (H, W) or None."""
    import cv2
    import numpy as np

    from inference.visualize import text_style

    scale, thickness = text_style(image.shape)
    canvas = np.clip(image, 0, 255).astype(np.float32)
    if ignore is not None and ignore.any():
        rows, cols = np.indices(ignore.shape)
        stripes = ((rows + cols) // 6) % 2 == 0
        shade = ignore.astype(bool)
        canvas[shade] = 0.5 * canvas[shade] + 0.5 * np.where(stripes[shade, None], 90.0, 170.0)
    for n, (mask, name) in enumerate(zip(masks, names, strict=True)):
        region = mask.astype(bool)
        if not region.any():
            continue
        colour = _colour(n)
        canvas[region] = 0.5 * canvas[region] + 0.5 * colour
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colour.tolist(), 1)
        ys, xs = np.nonzero(region)
        anchor = (int(xs.min()), max(int(ys.min()) - 3, int(25 * scale)))
        font = cv2.FONT_HERSHEY_SIMPLEX
        cv2.putText(canvas, name, anchor, font, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(canvas, name, anchor, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return canvas.astype(np.uint8)


def raw_samples(config, num_samples: int):
    """(source_id, image, masks, class indices, ignore) of the first records, un-augmented."""
    import numpy as np
    import tensorflow as tf

    from data.decoder import Decoder, segment_masks
    from data.pipeline import TASK_SOURCES, load_categories

    pattern = config.data.train_files
    decoder = Decoder(load_categories(config, pattern), TASK_SOURCES[config.inference.task])
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern}; set data.train_files")
    for record in tf.data.TFRecordDataset(files).take(num_samples):
        example = decoder(record)
        classes, crowd = example["classes"], example["is_crowd"]
        if "masks" in example:
            masks = example["masks"]
        else:
            labels = example.get("label_map", example.get("segment_map"))
            masks = segment_masks(labels, tf.size(classes))
        crowd_masks = tf.boolean_mask(masks, crowd).numpy()
        ignore = crowd_masks.max(axis=0) if len(crowd_masks) else None
        if "label_map" in example:
            ignore = (example["label_map"].numpy() == 0).astype(np.uint8)
        keep = (~crowd & (tf.reduce_any(masks > 0, axis=[1, 2]))).numpy()
        yield (
            example["source_id"].numpy().decode(),
            example["image"].numpy(),
            masks.numpy()[keep],
            classes.numpy()[keep],
            ignore,
        )


def augmented_samples(config, num_samples: int):
    from data.pipeline import build_dataset

    for sample in build_dataset(config, "train", with_extras=True).take(num_samples).as_numpy_iterator():
        valid = sample["valid"]
        yield (
            sample["source_id"].decode(),
            sample["image"],
            sample["masks"][valid],
            sample["labels"][valid],
            sample["ignore_mask"],
        )


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--num_samples", type=int, default=8, help="how many images to render (default: 8)")
    parser.add_argument("--raw", action="store_true", help="the decoded records, before augmentation")
    parser.add_argument(
        "--output_dir", default="images/dataset_test", help="where sample_NNN.png go (default: images/dataset_test)"
    )
    cli.add_config_arguments(parser)
    args = cli.parse(parser, argv)
    if args.num_samples < 1:
        raise cli.CommandError(f"--num_samples must be >= 1, got {args.num_samples}")
    config = cli.config_from_args(args)
    if config.data.seed is None:
        config.data.seed = 0  # the same samples on every run
    cli.import_tensorflow()
    import cv2

    from data.pipeline import load_categories

    categories = load_categories(config, config.data.train_files)
    samples = raw_samples if args.raw else augmented_samples
    written = 0
    for n, (source_id, image, masks, labels, ignore) in enumerate(samples(config, args.num_samples)):
        names = [categories.names[label] for label in labels]
        os.makedirs(args.output_dir, exist_ok=True)
        path = os.path.join(args.output_dir, f"sample_{n:03d}.png")
        if not cv2.imwrite(path, render(image, masks, names, ignore)[..., ::-1]):
            raise OSError(f"cannot write {path}; check that --output_dir {args.output_dir} is writable")
        print(f"{path}: image {source_id}, {len(names)} targets: {', '.join(names) or '-'}")
        written += 1
    if written == 0:
        raise cli.CommandError(
            f"data.train_files {config.data.train_files} holds no usable records (empty shards?); "
            "check the converter's summary and the pattern"
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

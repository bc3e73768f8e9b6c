"""Writes the synthetic shapes dataset (COCO instances, COCO panoptic and semantic label PNGs).

    python -m tools.make_synthetic_dataset datasets/synthetic --train 400 --val 100 --seed 0 --size 128 128

Same arguments, same bytes. What the images hold and the folder layout: see data/synthetic.py. It
prints the convert_coco_to_tfrecord.py commands that turn the result into TFRecords.
"""

import os
import sys

import cli  # noqa: E402

MIN_OBJECTS, MAX_OBJECTS = 2, 6  # data.synthetic.SyntheticSpec's defaults (tests check they agree)


def parse_args(argv: list[str] | None = None):
    parser = cli.parser(__doc__)
    parser.add_argument("out_dir", help="output folder (created; files already there are overwritten)")
    parser.add_argument("--train", type=int, default=400, help="training images")
    parser.add_argument("--val", type=int, default=100, help="held-out images")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"), help="image size")
    parser.add_argument("--min-objects", type=int, default=MIN_OBJECTS, help="things per image, at least")
    parser.add_argument("--max-objects", type=int, default=MAX_OBJECTS, help="things per image, at most")
    parser.add_argument("--any-colour", action="store_true", help="any hue for any class (shape is the only cue)")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image format")
    return cli.parse(parser, argv)


def convert_commands(out_dir: str, split: str) -> list[str]:
    """The convert_coco_to_tfrecord.py commands for one split: instances + panoptic, and semantic."""
    annotations = os.path.join(out_dir, "annotations")
    images = os.path.join(out_dir, split)
    return [
        f"python convert_coco_to_tfrecord.py --image_dir={images} "
        f"--object_annotations_file={annotations}/instances_{split}.json "
        f"--panoptic_annotations_file={annotations}/panoptic_{split}.json "
        f"--panoptic_masks_dir={annotations}/panoptic_{split} "
        f"--output_file_prefix={out_dir}/tfrecords/{split} --num_shards=1",
        f"python convert_coco_to_tfrecord.py --image_dir={images} "
        f"--semantic_masks_dir={annotations}/semantic_{split} --categories_file={out_dir}/categories.json "
        f"--output_file_prefix={out_dir}/tfrecords_semantic/{split} --num_shards=1",
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from data.synthetic import SyntheticSpec, write_dataset

    if args.train < 0 or args.val < 0:
        print("make_synthetic_dataset.py: --train and --val must be >= 0", file=sys.stderr)
        return 1
    spec = SyntheticSpec(
        height=args.size[0],
        width=args.size[1],
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        colour_by_class=not args.any_colour,
        image_format=args.format,
        seed=args.seed,
    )
    try:
        spec.validate()
    except ValueError as e:
        print(f"make_synthetic_dataset.py: {e}", file=sys.stderr)
        return 1
    splits = {name: count for name, count in (("train", args.train), ("val", args.val)) if count}
    counts = write_dataset(args.out_dir, spec, splits)
    for split, count in counts.items():
        print(
            f"{split}: {count['images']} images in {os.path.join(args.out_dir, split)}, {count['things']} things, "
            f"{count['segments']} panoptic segments; annotations in {os.path.join(args.out_dir, 'annotations')}"
        )
    print("convert to TFRecords with:")
    for split in counts:
        for command in convert_commands(args.out_dir, split):
            print(f"  {command}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

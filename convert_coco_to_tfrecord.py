"""Converts COCO instances / COCO panoptic / semantic label PNGs into sharded TFRecords.

Accepts the flags of TF Model Garden's `create_coco_tf_record.py` and writes its shard names
(`PREFIX-00000-of-00008.tfrecord`), plus `categories.json` beside the shards. COCO instances:

    python convert_coco_to_tfrecord.py --image_dir=coco/train2017 \
        --object_annotations_file=coco/annotations/instances_train2017.json \
        --output_file_prefix=datasets/coco/tfrecords/train --num_shards=256

COCO panoptic (add --object_annotations_file to store the instance objects too):

    python convert_coco_to_tfrecord.py --image_dir=coco/train2017 \
        --panoptic_annotations_file=coco/annotations/panoptic_train2017.json \
        --panoptic_masks_dir=coco/annotations/panoptic_train2017 \
        --output_file_prefix=datasets/coco_panoptic/tfrecords/train --num_shards=256

ADE20K (label PNG pixel = category id; pixels of unlisted ids, e.g. 0, are ignored in training):

    python convert_coco_to_tfrecord.py --image_dir=ADEChallengeData2016/images/training \
        --semantic_masks_dir=ADEChallengeData2016/annotations/training \
        --categories_file=ade20k_categories.json --output_file_prefix=datasets/ade20k/tfrecords/train

labelme or CVAT annotations (COCO JSON of them written as PREFIX.json; 10% held out as DIR/val-*):

    python convert_coco_to_tfrecord.py --labelme_dir=mydata/images --labels_file=mydata/labels.txt \
        --output_file_prefix=datasets/mydata/train --num_shards=8 --val_fraction=0.1
    python convert_coco_to_tfrecord.py --cvat_xml=mydata/annotations.xml --image_dir=mydata/images \
        --output_file_prefix=datasets/mydata/train --num_shards=8 --val_fraction=0.1

It prints one line per piece of bad input (`skipped (kind): file: reason`) and a summary with the
counts; `--strict` stops at the first one instead. Shards are written under temporary names and
renamed at the end, so a stopped conversion leaves none; converting no image at all is an error.
Flags take underscores or hyphens (`--image_dir` = `--image-dir`). Exit status: 0 done, 1 stopped on
bad input (one line naming the file), 2 bad flags.
"""

from __future__ import annotations

import argparse
import sys

import cli


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _add_bool(parser: argparse.ArgumentParser, name: str, default: bool, help_text: str) -> None:
    """absl-style boolean: --name, --name=false, --noname."""
    parser.add_argument(f"--{name}", nargs="?", const=True, default=default, type=_parse_bool, help=help_text)
    parser.add_argument(f"--no{name}", dest=name, action="store_false", help=argparse.SUPPRESS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.parser(__doc__)
    parser.add_argument(
        "--image_dir",
        default="",
        help="folder of the images (file_name is relative to it; with --labelme_dir: "
        "the folder images must stay inside, default the labelme folder)",
    )
    parser.add_argument("--object_annotations_file", default="", help="COCO instances JSON")
    parser.add_argument("--panoptic_annotations_file", default="", help="COCO panoptic JSON")
    parser.add_argument("--panoptic_masks_dir", default="", help="folder of the panoptic PNGs")
    parser.add_argument("--image_info_file", default="", help="COCO image-info JSON (images without annotations)")
    parser.add_argument("--caption_annotations_file", default="", help="accepted for compatibility; ignored")
    parser.add_argument("--semantic_masks_dir", default="", help="folder of label PNGs named like the images")
    parser.add_argument("--categories_file", default="", help="JSON with 'categories' for --semantic_masks_dir")
    parser.add_argument("--labelme_dir", default="", help="labelme folder (one .json per image) instead of COCO JSON")
    parser.add_argument("--labels_file", default="", help="labelme labels.txt (default: the labels found, sorted)")
    parser.add_argument(
        "--labelme_class_pngs", default="", help="also write labelme2voc class PNGs of --labelme_dir into this folder"
    )
    parser.add_argument("--cvat_xml", default="", help="CVAT for images 1.1 XML (with --image_dir) instead of COCO")
    parser.add_argument("--val_fraction", type=float, default=0.0, help="share of images held out for validation")
    parser.add_argument("--val_output_file_prefix", default="", help="their shards (default: DIR/val beside PREFIX)")
    parser.add_argument("--split_seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--output_file_prefix", required=True, help="shards are PREFIX-00000-of-NNNNN.tfrecord")
    parser.add_argument("--num_shards", type=int, default=32, help="how many shards to write (default: 32)")
    parser.add_argument("--num_workers", type=int, default=0, help="worker processes (0 = one per CPU core)")
    _add_bool(parser, "include_masks", True, "store one PNG mask per object (default true; Model Garden's is false)")
    _add_bool(parser, "include_panoptic_masks", True, "store the category and instance PNGs")
    _add_bool(parser, "panoptic_skip_crowd", False, "leave crowd segments out of the panoptic masks")
    _add_bool(parser, "strict", False, "stop at the first piece of bad input instead of skipping it")
    args = cli.parse(parser, argv)
    if not args.image_dir and not args.labelme_dir:
        parser.error("--image_dir is required (except with --labelme_dir, where images sit beside the JSON files)")
    if args.labelme_class_pngs and not args.labelme_dir:
        parser.error("--labelme_class_pngs needs --labelme_dir")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.import_tensorflow()
    from data.coco_conversion import ConversionError, ConversionOptions, convert, summary

    if args.caption_annotations_file:
        print("note: --caption_annotations_file is ignored (captions are not used for segmentation)", file=sys.stderr)
    options = ConversionOptions(
        image_dir=args.image_dir,
        output_file_prefix=args.output_file_prefix,
        object_annotations_file=args.object_annotations_file,
        panoptic_annotations_file=args.panoptic_annotations_file,
        panoptic_masks_dir=args.panoptic_masks_dir,
        image_info_file=args.image_info_file,
        semantic_masks_dir=args.semantic_masks_dir,
        categories_file=args.categories_file,
        include_masks=args.include_masks,
        include_panoptic_masks=args.include_panoptic_masks,
        panoptic_skip_crowd=args.panoptic_skip_crowd,
        num_shards=args.num_shards,
        num_workers=args.num_workers,
        strict=args.strict,
        labelme_dir=args.labelme_dir,
        labels_file=args.labels_file,
        cvat_xml=args.cvat_xml,
        val_fraction=args.val_fraction,
        val_output_file_prefix=args.val_output_file_prefix,
        split_seed=args.split_seed,
    )
    try:
        stats = convert(options)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary(stats))
    if args.labelme_class_pngs:
        from data.labelme import write_class_pngs

        write_class_pngs(args.labelme_dir, args.labelme_class_pngs, args.labels_file, args.image_dir)
        print(f"class PNGs (labelme2voc: 0 background, 255 __ignore__) in {args.labelme_class_pngs}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

"""COCO instances, COCO panoptic, semantic label PNGs, labelme folders and CVAT XML to sharded TFRecords.

`convert_coco_to_tfrecord.py` is the command line; this module does the work so tests can call it:

    stats = convert(ConversionOptions(image_dir=..., object_annotations_file=..., output_file_prefix=...))
    stats = convert(ConversionOptions(labelme_dir="mydata", output_file_prefix=..., val_fraction=0.1))

labelme folders (`data/labelme.py`) and CVAT XML (`data/cvat.py`) are read into COCO instances in memory;
that COCO JSON is also written as `PREFIX.json` (for `test_map.py --gt`). `val_fraction` holds out a
seeded random share of the images into `val_output_file_prefix` shards (default: `val` beside PREFIX).

Worker processes build one `tf.train.Example` per image; the main process writes example i to
shard i % num_shards (as Model Garden does), so the output does not depend on the worker count.
Bad input is skipped with one line naming the file and the reason (or raises with `strict`).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import multiprocessing
import os
import sys
from collections.abc import Iterable

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from data import tfrecord_format as fmt
from data.annotation_source import Problem
from data.categories import Categories
from data.cvat import CvatError, read_cvat_xml
from data.labelme import LabelmeError, read_labelme_dir
from jsonfile import read_json, write_json


class ConversionError(ValueError):
    """Bad input met with `strict=True`; the message names the file and the reason."""


@dataclasses.dataclass
class ConversionOptions:
    """What to convert. Flag names are those of Model Garden's `create_coco_tf_record.py`."""

    image_dir: str
    output_file_prefix: str
    object_annotations_file: str = ""
    panoptic_annotations_file: str = ""
    panoptic_masks_dir: str = ""
    image_info_file: str = ""  # images without annotations (e.g. test-dev)
    semantic_masks_dir: str = ""  # ADE20K style label PNGs named like the images
    categories_file: str = ""  # category list for semantic labels (COCO `categories` JSON)
    include_masks: bool = True
    include_panoptic_masks: bool = True
    panoptic_skip_crowd: bool = False
    num_shards: int = 8
    num_workers: int = 0  # 0 = one per CPU core
    strict: bool = False
    progress: bool = True
    labelme_dir: str = ""  # labelme folder (one JSON per image) instead of a COCO JSON
    labels_file: str = ""  # labelme labels.txt (default: the labels found, sorted)
    cvat_xml: str = ""  # CVAT for images 1.1 XML; images under image_dir
    val_fraction: float = 0.0  # share of the images held out for validation
    val_output_file_prefix: str = ""  # their shards (default: DIR/val beside output_file_prefix)
    split_seed: int = 0


def val_prefix(options: ConversionOptions) -> str:
    """Where held-out images go: the flag, or `val` in the output folder."""
    return options.val_output_file_prefix or os.path.join(os.path.dirname(options.output_file_prefix), "val")


@dataclasses.dataclass
class ConversionStats:
    images_written: int = 0
    images_skipped: int = 0
    max_instances: int = 0  # most non-crowd instances (or segments) in one image
    problems: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    shards: list[str] = dataclasses.field(default_factory=list)
    images_per_split: dict = dataclasses.field(default_factory=dict)  # "train"/"val" -> images written
    notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # shapes left out on purpose


# ------------------------------------------------------------------ planning
def _load_json(path: str) -> dict:
    """A COCO-style JSON object; ConversionError naming the file when it is missing, not JSON, or not an object."""
    data = read_json(path, "annotation", "re-export it", ConversionError)
    if not isinstance(data, dict):
        raise ConversionError(
            f"annotation file {path} holds a JSON {type(data).__name__}, not a COCO object with "
            "'images', 'annotations' and 'categories'; export it in COCO format"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise ConversionError(f"annotation file {path}: '{key}' must be a list")
    return data


def _images(data: dict, path: str, problems: list) -> dict[int, dict]:
    """The usable `images` entries by id; entries without an integer `id` or a `file_name` become problems."""
    images = {}
    for n, im in enumerate(data.get("images", [])):
        try:
            images[int(im["id"])] = im
            str(im["file_name"])
        except (KeyError, TypeError, ValueError) as e:
            images.pop(im.get("id") if isinstance(im, dict) else None, None)
            problems.append(Problem("bad image entry", path, f"images[{n}] has no usable {e} ({str(im)[:80]})"))
    return images


def _image_id(ann, path: str, problems: list, images: dict) -> int | None:
    """The annotation's image id if that image is listed; else a problem is recorded and None returned."""
    try:
        image_id = int(ann["image_id"])
    except (KeyError, TypeError, ValueError):
        where = ann.get("id", ann.get("file_name")) if isinstance(ann, dict) else ann
        problems.append(Problem("bad annotation", path, f"annotation {str(where)[:60]} has no usable 'image_id'"))
        return None
    if image_id not in images:
        name = ann.get("id", ann.get("file_name"))
        problems.append(
            Problem(
                "annotation for a missing image",
                path,
                f"annotation {name} refers to image id {image_id}, which is not in 'images'",
            )
        )
        return None
    return image_id


def _categories(data: dict, path: str) -> Categories:
    try:
        return Categories.from_coco(data.get("categories", []))
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(f"annotation file {path}: 'categories' is malformed ({e}); each needs an 'id'") from None


def _read_tool_source(options: ConversionOptions):
    """The labelme folder or CVAT XML as an AnnotationSource; ConversionError for unusable input."""
    if (
        options.object_annotations_file
        or options.panoptic_annotations_file
        or (options.labelme_dir and options.cvat_xml)
    ):
        raise ConversionError("give one annotation source: --labelme_dir, --cvat_xml or COCO JSON files, not several")
    try:
        if options.labelme_dir:
            return read_labelme_dir(options.labelme_dir, options.labels_file, root=options.image_dir)
        if not options.image_dir:
            raise ConversionError("--cvat_xml needs --image_dir (the folder of the task's images)")
        return read_cvat_xml(options.cvat_xml, options.image_dir)
    except (LabelmeError, CvatError) as e:
        raise ConversionError(str(e)) from None


def _plan(options: ConversionOptions) -> tuple[list[dict], Categories, Categories | None, list[Problem], object]:
    """Per-image tasks, the category list (plus the instance one when both sources are given), problems,
    and the labelme / CVAT AnnotationSource (None for COCO files)."""
    images: dict[int, dict] = {}
    problems: list[Problem] = []
    object_annotations: dict[int, list[dict]] = collections.defaultdict(list)
    panoptic_annotations: dict[int, dict] = {}
    categories = instance_categories = None
    source = _read_tool_source(options) if options.labelme_dir or options.cvat_xml else None
    annotation_name = options.labelme_dir or options.cvat_xml or options.object_annotations_file

    if options.object_annotations_file or source is not None:
        path = annotation_name
        data = source.coco if source is not None else _load_json(path)
        problems.extend(source.problems if source is not None else ())
        images.update(_images(data, path, problems))
        instance_categories = _categories(data, path)
        for ann in data.get("annotations", []):
            image_id = _image_id(ann, path, problems, images)
            if image_id is not None:
                object_annotations[image_id].append(ann)
        categories = instance_categories
    if options.panoptic_annotations_file:
        path = options.panoptic_annotations_file
        data = _load_json(path)
        images.update(_images(data, path, problems))
        categories = _categories(data, path)
        for ann in data.get("annotations", []):
            image_id = _image_id(ann, path, problems, images)
            if image_id is not None:
                panoptic_annotations[image_id] = ann
    if options.image_info_file:
        data = _load_json(options.image_info_file)
        for image_id, im in _images(data, options.image_info_file, problems).items():
            images.setdefault(image_id, im)
        if categories is None and data.get("categories"):
            categories = _categories(data, options.image_info_file)
    if options.semantic_masks_dir:
        if not options.categories_file:
            raise ConversionError("--semantic_masks_dir needs --categories_file (a JSON file with 'categories')")
        categories = _categories(_load_json(options.categories_file), options.categories_file)
        if not images:  # ADE20K style: every image in image_dir, label PNG of the same stem
            names = sorted(n for n in os.listdir(options.image_dir) if n.lower().endswith((".jpg", ".jpeg", ".png")))
            images = {i: {"id": i, "file_name": n} for i, n in enumerate(names)}
    if categories is None:
        raise ConversionError(
            "nothing to convert: give --object_annotations_file, --panoptic_annotations_file, "
            "or --semantic_masks_dir with --categories_file"
        )

    tasks = []
    for image_id in sorted(images):
        info = images[image_id]
        task = {
            "image_id": image_id,
            "info": info,
            "image_path": os.path.join(options.image_dir, info["file_name"]),
            "image_bytes": None,
            "source": annotation_name,
            "objects": object_annotations.get(image_id, []) if annotation_name else None,
            "panoptic": None,
            "semantic_path": None,
        }
        if source is not None:
            task["image_path"] = source.image_paths.get(image_id, info["file_name"])
            task["image_bytes"] = source.image_bytes.get(image_id)
        if image_id in panoptic_annotations:
            ann = panoptic_annotations[image_id]
            task["panoptic"] = {
                "png_path": os.path.join(options.panoptic_masks_dir, ann["file_name"]),
                "segments_info": ann.get("segments_info", []),
            }
        if options.semantic_masks_dir:
            stem = os.path.splitext(os.path.basename(info["file_name"]))[0]
            task["semantic_path"] = os.path.join(options.semantic_masks_dir, stem + ".png")
        tasks.append(task)
    return tasks, categories, instance_categories if options.panoptic_annotations_file else None, problems, source


# ------------------------------------------------------------ one image each
_WORKER: dict = {}


def _init_worker(category_ids: set[int], options: ConversionOptions) -> None:
    _WORKER["category_ids"] = category_ids
    _WORKER["options"] = options


def _read_image(path: str, encoded: bytes | None = None) -> tuple[bytes, str, int, int]:
    """Encoded bytes (JPEG/PNG kept as they are, others re-encoded as PNG), format, height, width."""
    if encoded is None:
        with open(path, "rb") as f:
            encoded = f.read()
    with Image.open(io.BytesIO(encoded)) as image:
        image.load()  # raises on truncated or corrupt data
        image_format, mode, (width, height) = image.format, image.mode, image.size
        if image_format in ("JPEG", "PNG") and mode in ("RGB", "L"):
            return encoded, image_format.lower(), height, width
        rgb = np.asarray(image.convert("RGB"))
    return fmt.encode_png(rgb[..., ::-1]), "png", height, width  # cv2 encodes BGR


def _decode_segmentation(ann: dict, height: int, width: int) -> np.ndarray:
    """The annotation's mask (H, W) uint8 0/1, decoded by pycocotools like COCO.annToMask."""
    segm = ann["segmentation"]
    if isinstance(segm, list):
        if not segm:
            raise ValueError("fewer than 3 points: the segmentation is an empty list of polygons")
        for n, polygon in enumerate(segm):
            if len(polygon) < 6 or len(polygon) % 2:
                raise ValueError(f"fewer than 3 points: polygon {n} has {len(polygon)} coordinates")
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm, dict) and "counts" in segm:
        if list(segm.get("size", [])) != [height, width]:
            raise ValueError(f"RLE size {segm.get('size')} differs from the image size {[height, width]}")
        rle = mask_utils.frPyObjects(segm, height, width) if isinstance(segm["counts"], list) else segm
    else:
        raise ValueError(f"segmentation is neither polygons nor RLE: {str(segm)[:60]}")
    return mask_utils.decode(rle)


class _BadAnnotation(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def _add_object(ann: dict, height: int, width: int, include_mask: bool, columns: dict) -> None:
    """Appends one annotation to the per-object columns, or raises _BadAnnotation (nothing appended)."""
    try:
        category_id = int(ann["category_id"])
        segmentation_present = "segmentation" in ann
    except (KeyError, TypeError, ValueError) as e:
        raise _BadAnnotation("bad annotation", f"missing or malformed field {e}") from None
    if category_id not in _WORKER["category_ids"]:
        raise _BadAnnotation("unknown category", f"category id {category_id} is not listed")
    mask = None
    if include_mask or "bbox" not in ann:
        if not segmentation_present:
            raise _BadAnnotation("bad annotation", "no 'segmentation' (masks were asked for)")
        try:
            mask = _decode_segmentation(ann, height, width)
        except (ValueError, TypeError, KeyError) as e:
            kind = "polygon with fewer than 3 points" if "fewer than 3" in str(e) else "bad segmentation"
            raise _BadAnnotation(kind, str(e)) from None
    try:
        bbox = ann["bbox"] if "bbox" in ann else mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask)))
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError) as e:
        raise _BadAnnotation("bad annotation", f"malformed bbox {ann.get('bbox')}: {e}") from None
    if w <= 0 or h <= 0 or x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise _BadAnnotation("box outside the image", f"bbox {[x, y, w, h]} in a {width}x{height} image")
    try:
        area = float(ann.get("area", 0.0))
    except (TypeError, ValueError):
        raise _BadAnnotation("bad annotation", f"area {ann.get('area')!r} is not a number") from None
    if area < 0:
        raise _BadAnnotation("negative area", f"area {area} (an area is a pixel count >= 0)")
    if include_mask:
        columns["mask"].append(fmt.encode_png(mask))
    columns["xmin"].append(max(x, 0.0) / width)
    columns["xmax"].append(min(x + w, float(width)) / width)
    columns["ymin"].append(max(y, 0.0) / height)
    columns["ymax"].append(min(y + h, float(height)) / height)
    columns["label"].append(category_id)
    columns["is_crowd"].append(int(ann.get("iscrowd", 0)))
    columns["area"].append(area)


def _object_features(task: dict, height: int, width: int, problems: list[Problem]) -> tuple[dict, int]:
    """Model Garden `image/object/*` features; bad annotations are reported and skipped."""
    import tensorflow as tf

    options: ConversionOptions = _WORKER["options"]
    source = f"{task['source']} (image {task['info']['file_name']})"
    columns = collections.defaultdict(list)
    for ann in task["objects"]:
        where = f"{source}, annotation {ann.get('id')}"
        try:
            _add_object(ann, height, width, options.include_masks, columns)
        except _BadAnnotation as e:
            problems.append(Problem(e.kind, where, e.reason))

    floats = lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=v))  # noqa: E731
    ints = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v))  # noqa: E731
    features = {
        fmt.OBJECT_XMIN: floats(columns["xmin"]),
        fmt.OBJECT_XMAX: floats(columns["xmax"]),
        fmt.OBJECT_YMIN: floats(columns["ymin"]),
        fmt.OBJECT_YMAX: floats(columns["ymax"]),
        fmt.OBJECT_LABEL: ints(columns["label"]),
        fmt.OBJECT_IS_CROWD: ints(columns["is_crowd"]),
        fmt.OBJECT_AREA: floats(columns["area"]),
    }
    if options.include_masks:
        features[fmt.OBJECT_MASK] = tf.train.Feature(bytes_list=tf.train.BytesList(value=columns["mask"]))
    return features, sum(1 for c in columns["is_crowd"] if not c)


def _read_label_png(path: str) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        return np.asarray(image)


def _panoptic_features(task: dict, height: int, width: int, problems: list[Problem]) -> tuple[dict, int]:
    """Panoptic PNG (id = R + 256 G + 256^2 B) -> category mask, 16-bit instance mask, segment lists."""
    import tensorflow as tf

    options: ConversionOptions = _WORKER["options"]
    png_path = task["panoptic"]["png_path"]
    rgb = _read_label_png(png_path).astype(np.uint32)
    if rgb.ndim != 3 or rgb.shape[:2] != (height, width):
        raise ValueError(f"panoptic PNG has shape {rgb.shape}, expected ({height}, {width}, 3)")
    id_map = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    category_mask = np.zeros((height, width), np.uint16)
    instance_mask = np.zeros((height, width), np.uint16)
    columns = collections.defaultdict(list)
    for segment in task["panoptic"]["segments_info"]:
        where = f"{png_path}, segment {segment['id']}"
        if int(segment["category_id"]) not in _WORKER["category_ids"]:
            problems.append(Problem("unknown category", where, f"category id {segment['category_id']} is not listed"))
            continue
        if options.panoptic_skip_crowd and segment.get("iscrowd", 0):
            continue
        if float(segment.get("area", 0)) < 0:
            problems.append(Problem("negative area", where, f"area {segment['area']} (a pixel count is >= 0)"))
            continue
        pixels = id_map == int(segment["id"])
        if not pixels.any():
            problems.append(Problem("empty segment", where, "no pixel of the PNG has this id"))
            continue
        if len(columns["id"]) == fmt.MAX_PANOPTIC_SEGMENTS:
            raise ValueError(f"more than {fmt.MAX_PANOPTIC_SEGMENTS} segments")
        columns["id"].append(int(segment["id"]))
        columns["label"].append(int(segment["category_id"]))
        columns["is_crowd"].append(int(segment.get("iscrowd", 0)))
        columns["area"].append(float(segment.get("area", pixels.sum())))
        category_mask[pixels] = int(segment["category_id"])
        instance_mask[pixels] = len(columns["id"])
    if category_mask.max() < 256:  # Model Garden's 8-bit category mask whenever the ids fit
        category_mask = category_mask.astype(np.uint8)

    ints = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v))  # noqa: E731
    features = {
        fmt.SEGMENT_ID: ints(columns["id"]),
        fmt.SEGMENT_LABEL: ints(columns["label"]),
        fmt.SEGMENT_IS_CROWD: ints(columns["is_crowd"]),
        fmt.SEGMENT_AREA: tf.train.Feature(float_list=tf.train.FloatList(value=columns["area"])),
    }
    if options.include_panoptic_masks:
        features[fmt.PANOPTIC_CATEGORY_MASK] = _bytes_feature(fmt.encode_png(category_mask))
        features[fmt.PANOPTIC_INSTANCE_MASK] = _bytes_feature(fmt.encode_png(instance_mask))
    return features, sum(1 for c in columns["is_crowd"] if not c)


def _bytes_feature(value: bytes):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _convert_image_safely(task: dict) -> tuple[bytes | None, list[Problem], int]:
    """_convert_image, with anything unforeseen reported against the image instead of ending the run."""
    try:
        return _convert_image(task)
    except Exception as e:  # noqa: BLE001 - one odd image must not stop a long conversion
        return None, [Problem("unexpected error", task["image_path"], f"{type(e).__name__}: {e}")], 0


def _convert_image(task: dict) -> tuple[bytes | None, list[Problem], int]:
    """(serialized tf.train.Example or None when the image is skipped, problems, instances)."""
    import tensorflow as tf

    problems: list[Problem] = []
    info = task["info"]
    try:
        encoded, image_format, height, width = _read_image(task["image_path"], task["image_bytes"])
    except (OSError, ValueError, SyntaxError) as e:
        return None, [Problem("unreadable image", task["image_path"], f"{type(e).__name__}: {e}")], 0
    if (int(info.get("height", height)), int(info.get("width", width))) != (height, width):
        reason = f"image is {width}x{height} but the annotation says {info.get('width')}x{info.get('height')}"
        return None, [Problem("image size differs", task["image_path"], reason)], 0

    features = {
        fmt.IMAGE_ENCODED: _bytes_feature(encoded),
        fmt.IMAGE_FORMAT: _bytes_feature(image_format.encode()),
        fmt.IMAGE_HEIGHT: tf.train.Feature(int64_list=tf.train.Int64List(value=[height])),
        fmt.IMAGE_WIDTH: tf.train.Feature(int64_list=tf.train.Int64List(value=[width])),
        fmt.IMAGE_FILENAME: _bytes_feature(str(info["file_name"]).encode()),
        fmt.IMAGE_SOURCE_ID: _bytes_feature(str(task["image_id"]).encode()),
    }
    instances = 0
    if task["objects"] is not None:
        object_features, instances = _object_features(task, height, width, problems)
        features.update(object_features)
    if task["panoptic"] is not None:
        try:
            panoptic_features, segments = _panoptic_features(task, height, width, problems)
        except (OSError, ValueError, SyntaxError) as e:
            problems.append(Problem("unreadable panoptic PNG", task["panoptic"]["png_path"], str(e)))
            return None, problems, 0
        features.update(panoptic_features)
        instances = max(instances, segments)
    if task["semantic_path"] is not None:
        try:
            label = _read_label_png(task["semantic_path"])
            if label.shape[:2] != (height, width) or label.ndim != 2:
                raise ValueError(f"label PNG has shape {label.shape}, expected ({height}, {width})")
        except (OSError, ValueError, SyntaxError) as e:
            problems.append(Problem("unreadable label PNG", task["semantic_path"], str(e)))
            return None, problems, 0
        if label.dtype not in (np.uint8, np.uint16):
            label = label.astype(np.uint16)
        features[fmt.SEMANTIC_ENCODED] = _bytes_feature(fmt.encode_png(label))
        features[fmt.SEMANTIC_FORMAT] = _bytes_feature(b"png")
        instances = max(instances, len(np.unique(label)))
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString(), problems, instances


# ---------------------------------------------------------------------- run
def split_tasks(tasks: list[dict], fraction: float, seed: int) -> list[str]:
    """ "train" or "val" per task: round(fraction * N) images (at least 1 when fraction > 0), seeded."""
    if not 0.0 <= fraction < 1.0:
        raise ConversionError(f"--val_fraction must be in [0, 1), got {fraction}")
    held_out = 0 if fraction == 0 else max(1, round(fraction * len(tasks)))
    if fraction and held_out >= len(tasks):
        raise ConversionError(f"--val_fraction {fraction} leaves no training image out of {len(tasks)}")
    chosen = set(np.random.default_rng(seed).permutation(len(tasks))[:held_out].tolist())
    return ["val" if i in chosen else "train" for i in range(len(tasks))]


def _write_coco_subset(coco: dict, image_ids: set[int], path: str) -> None:
    """The COCO instances JSON of some images (what a labelme / CVAT source was read as)."""
    subset = {
        "images": [im for im in coco["images"] if im["id"] in image_ids],
        "annotations": [a for a in coco["annotations"] if a["image_id"] in image_ids],
        "categories": coco["categories"],
    }
    write_json(path, subset)


def convert(options: ConversionOptions, log=None) -> ConversionStats:
    """Converts everything `options` names; returns counts. Raises ConversionError on bad input if strict."""
    import tensorflow as tf

    if log is None:  # on a terminal, clear the progress bar's line first
        clear = "\r\x1b[2K" if options.progress and sys.stdout.isatty() else ""
        log = lambda line: print(clear + line, file=sys.stderr, flush=True)  # noqa: E731
    if options.num_shards < 1:
        raise ConversionError(f"--num_shards must be >= 1, got {options.num_shards}")
    if options.image_dir or not options.labelme_dir:
        if not os.path.isdir(options.image_dir):
            what = "is a file, not a folder" if os.path.exists(options.image_dir) else "does not exist"
            raise ConversionError(f"--image_dir {options.image_dir} {what}; pass the folder the images are in")
        if not any(os.scandir(options.image_dir)):
            raise ConversionError(f"--image_dir {options.image_dir} is empty; pass the folder the images are in")
    tasks, categories, instance_categories, problems, source = _plan(options)
    splits = split_tasks(tasks, options.val_fraction, options.split_seed)
    prefixes = {"train": options.output_file_prefix}
    num_shards = {"train": options.num_shards}
    if options.val_fraction:
        prefixes["val"] = val_prefix(options)
        num_shards["val"] = max(1, round(options.num_shards * options.val_fraction))
        if os.path.abspath(prefixes["val"]) == os.path.abspath(prefixes["train"]):
            raise ConversionError(f"--val_output_file_prefix {prefixes['val']} is the training prefix; give another")
    stats = ConversionStats()
    if source is not None:
        stats.notes.update(source.notes)

    def report(found: Iterable[Problem]) -> None:
        for problem in found:
            if options.strict:
                raise ConversionError(
                    f"{problem.file}: {problem.reason} ({problem.kind}; run without --strict to skip)"
                )
            stats.problems[problem.kind] += 1
            log(str(problem))

    report(problems)
    output_dirs = sorted({os.path.dirname(os.path.abspath(prefix)) for prefix in prefixes.values()})
    for output_dir in output_dirs:
        os.makedirs(output_dir, exist_ok=True)
    # Shards are written under temporary names and renamed at the end: a stopped run leaves no partial shards.
    writers, temporary = {}, []
    for split, prefix in prefixes.items():
        paths = [fmt.shard_path(prefix, i, num_shards[split]) for i in range(num_shards[split])]
        stats.shards += paths
        temporary += [f"{path}.partial" for path in paths]
        writers[split] = [tf.io.TFRecordWriter(f"{path}.partial") for path in paths]
        stats.images_per_split[split] = 0
    finished = False
    progress = None
    if options.progress and sys.stdout.isatty():  # a bar on a terminal; a log gets only the summary line
        import keras

        progress = keras.utils.Progbar(len(tasks), unit_name="image")

    workers = options.num_workers or os.cpu_count() or 1
    context = multiprocessing.get_context("fork")
    category_ids = set(categories.ids) | set(instance_categories.ids if instance_categories else ())
    try:
        with context.Pool(workers, initializer=_init_worker, initargs=(category_ids, options)) as pool:
            for done, (split, (serialized, found, instances)) in enumerate(
                zip(splits, pool.imap(_convert_image_safely, tasks, chunksize=4), strict=True), 1
            ):
                report(found)
                if serialized is None:
                    stats.images_skipped += 1
                else:
                    written = stats.images_per_split[split]
                    writers[split][written % num_shards[split]].write(serialized)
                    stats.images_per_split[split] += 1
                    stats.images_written += 1
                    stats.max_instances = max(stats.max_instances, instances)
                if progress is not None:
                    progress.update(done)
        finished = True
    finally:
        for split_writers in writers.values():
            for writer in split_writers:
                writer.close()
        if not finished or stats.images_written == 0:
            for path in temporary:
                if os.path.exists(path):
                    os.remove(path)
    if stats.images_written == 0:
        raise ConversionError(
            f"no image was converted ({stats.images_skipped} of {len(tasks)} skipped; see the lines above): "
            f"check --image_dir {options.image_dir} and the annotation files; no shards were written"
        )
    for path, final in zip(temporary, stats.shards, strict=True):
        os.replace(path, final)

    for output_dir in output_dirs:
        categories.save(os.path.join(output_dir, "categories.json"))
        if instance_categories is not None:
            instance_categories.save(os.path.join(output_dir, "instance_categories.json"))
    if source is not None:
        for split, prefix in prefixes.items():
            ids = {task["image_id"] for task, s in zip(tasks, splits, strict=True) if s == split}
            _write_coco_subset(source.coco, ids, f"{prefix}.json")
    return stats


def summary(stats: ConversionStats) -> str:
    """One paragraph: what was written, the largest instance count, what was skipped and why."""
    lines = [
        f"wrote {stats.images_written} images into {len(stats.shards)} shards "
        f"({stats.shards[0] if stats.shards else ''} ...); most instances in one image: {stats.max_instances} "
        "(keep data.max_instances at least this)",
    ]
    if len(stats.images_per_split) > 1:
        lines.append(", ".join(f"{split}: {n} images" for split, n in stats.images_per_split.items()))
    if stats.notes:
        lines.append("notes: " + ", ".join(f"{n} {what}" for what, n in sorted(stats.notes.items())))
    if stats.problems or stats.images_skipped:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(stats.problems.items()))
        lines.append(f"skipped {stats.images_skipped} images; bad input: {counts}")
    else:
        lines.append("no bad input")
    return "\n".join(lines)

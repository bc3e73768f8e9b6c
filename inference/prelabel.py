"""Model-assisted labelling: a model's predictions as CVAT XML and labelme files, for people to correct.

    stats = prelabel(predictor, categories, PrelabelOptions(folder="batch2"))

The folder is the annotation task, read and written in place (nothing outside it is written):
    batch2/images/x.jpg            the images (input; subfolders are not searched)
    batch2/annotations.xml         CVAT for images 1.1. An existing one is kept: its <meta>, its labels and
                                   the <image> elements that already have shapes; images without shapes get
                                   the predictions (CVAT polygons, or masks with `cvat_shape="mask"`)
    batch2/images/x.json           labelme file beside the image (labelme opens images/ and shows them);
                                   an existing labelme file with shapes marks a labelled image: kept as it is
    batch2/visuals/x.png           one overlay per image
    batch2/predictions/x.json      one per image, the format of test.py (inference/results_json.py: COCO RLE,
                                   category, score) plus the tool label; written last (temp + rename), so it
                                   is the checkpoint: a rerun skips these images and redoes nothing

Labelled images (shapes in annotations.xml or in a labelme file not written by us) are not predicted, and
shapes already in annotations.xml are never replaced (a rerun after corrections in CVAT keeps them).
`label_map` renames model classes to the tool's labels (a class mapped to "" is dropped); polygons are
simplified with cv2.approxPolyDP(`tolerance` px).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from data import cvat
from data.labelme import mask_to_polygons, polygon_shape, write_labelme_file
from jsonfile import write_json

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
CVAT_SHAPES = ("polygon", "mask")


class PrelabelError(ValueError):
    """The folder, its annotations.xml or the options cannot be used; the message says how to fix it."""


@dataclasses.dataclass
class PrelabelOptions:
    folder: str
    score_threshold: float = 0.5
    batch_size: int = 1
    label_map: dict[str, str] = dataclasses.field(default_factory=dict)  # model class -> tool label ("" drops)
    tolerance: float = 0.5  # polygon simplification, pixels
    cvat_shape: str = "polygon"


@dataclasses.dataclass
class PrelabelStats:
    predicted: int = 0  # images predicted by this run
    resumed: int = 0  # images whose predictions/*.json an earlier run wrote
    kept: int = 0  # labelled images left as they are
    instances: int = 0  # instances written by this run
    skipped: list[str] = dataclasses.field(default_factory=list)  # images that could not be read (a rerun retries)


def parse_label_map(items: list[str]) -> dict[str, str]:
    """["model class=tool label", "unwanted="] -> {"model class": "tool label", "unwanted": ""}."""
    mapping = {}
    for item in items:
        model_name, sep, tool_label = item.partition("=")
        if not sep or not model_name.strip():
            raise PrelabelError(f"--label-map {item!r} must look like 'model class=tool label' ('class=' drops it)")
        mapping[model_name.strip()] = tool_label.strip()
    return mapping


def _has_shapes(labelme_path: Path) -> bool:
    try:
        return bool(json.loads(labelme_path.read_text(encoding="utf-8")).get("shapes"))
    except (OSError, ValueError, AttributeError):
        return False


def _plan(options: PrelabelOptions, root) -> tuple[list[Path], list[Path], list[Path], set[str]]:
    """(images to predict, images already predicted, labelled images kept, names with shapes in the XML)."""
    images_dir = Path(options.folder) / "images"
    if not images_dir.is_dir():
        raise PrelabelError(f"{options.folder} has no images/ folder; put the images to pre-label in {images_dir}")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise PrelabelError(f"{images_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        raise PrelabelError(
            f"{images_dir} has two images with one name stem; rename one (x.jpg and x.png share x.json)"
        )
    labelled_in_xml = set()
    if root is not None:
        labelled_in_xml = {os.path.basename(im.get("name", "")) for im in root.findall("image") if len(im)}
    predictions = Path(options.folder) / "predictions"
    todo, done, kept = [], [], []
    for image in images:
        if (predictions / f"{image.stem}.json").is_file():
            done.append(image)
        elif image.name in labelled_in_xml or _has_shapes(image.with_suffix(".json")):
            kept.append(image)
        else:
            todo.append(image)
    return todo, done, kept, labelled_in_xml


def _record(result, image: Path, categories, options: PrelabelOptions) -> dict:
    """predictions/x.json: test.py's result JSON, each instance with its tool `label` (dropped ones left out)."""
    from inference.results_json import result_to_json

    record = result_to_json(result, image.name, categories.ids, categories.names, options.score_threshold)
    kept = []
    for entry in record["instances"]:
        label = options.label_map.get(entry["category_name"], entry["category_name"])
        if label:
            kept.append({**entry, "label": label})
    record["instances"] = kept
    return record


def _decode(entry: dict) -> np.ndarray:
    rle = entry["segmentation"]
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def _labelme_shapes(record: dict, tolerance: float) -> list[dict]:
    shapes = []
    for n, entry in enumerate(record["instances"], 1):
        polygons = mask_to_polygons(_decode(entry), tolerance)
        group_id = n if len(polygons) > 1 else None
        description = f"score {entry['score']:.2f}"
        shapes += [polygon_shape(entry["label"], p, group_id, description) for p in polygons]
    return shapes


def _add_cvat_shapes(root, record: dict, options: PrelabelOptions) -> None:
    image = cvat.image_element(root, record["file_name"], record["width"], record["height"])
    for n, entry in enumerate(record["instances"], 1):
        mask = _decode(entry)
        if options.cvat_shape == "mask":
            cvat.add_mask(image, entry["label"], mask)
            continue
        polygons = mask_to_polygons(mask, options.tolerance, pixel_edges=True)
        for polygon in polygons:
            cvat.add_polygon(image, entry["label"], polygon, group_id=n if len(polygons) > 1 else 0)


def _write_image(path: Path, rgb: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if not cv2.imwrite(str(tmp), rgb[..., ::-1]):
        raise OSError(f"could not write {path}")
    os.replace(tmp, path)


def check_task(options: PrelabelOptions, categories):
    """The folder's annotations.xml (root or None) and its plan (see `_plan`); PrelabelError when the options,
    the folder or its annotations.xml cannot be used (so a command line can check them before loading a model)."""
    if options.cvat_shape not in CVAT_SHAPES:
        raise PrelabelError(f"cvat shape {options.cvat_shape!r} is not one of {CVAT_SHAPES}")
    unknown = set(options.label_map) - set(categories.names)
    if unknown:
        raise PrelabelError(f"--label-map names {sorted(unknown)}, not classes of the model: {list(categories.names)}")
    xml_path = Path(options.folder) / "annotations.xml"
    try:
        root = cvat.parse_xml(str(xml_path)) if xml_path.exists() else None
    except cvat.CvatError as e:
        raise PrelabelError(str(e)) from None
    return root, _plan(options, root)


def prelabel(predictor, categories, options: PrelabelOptions, log=print) -> PrelabelStats:
    """Predicts the folder's unlabelled images (resuming), then writes annotations.xml from all predictions.

    An image that cannot be read is skipped with one line on stderr (`stats.skipped`)."""
    from inference.postprocess import InstanceResult
    from inference.predictor import read_image
    from inference.visualize import draw_instances

    folder = Path(options.folder)
    xml_path = folder / "annotations.xml"
    root, (todo, done, kept, labelled_in_xml) = check_task(options, categories)
    stats = PrelabelStats(resumed=len(done), kept=len(kept))
    for sub in ("visuals", "predictions"):
        (folder / sub).mkdir(exist_ok=True)
    if done or kept:
        log(f"{len(done)} images already predicted (predictions/), {len(kept)} labelled images kept; {len(todo)} to do")

    for start in range(0, len(todo), options.batch_size):
        batch, pixels = [], []
        for path in todo[start : start + options.batch_size]:
            try:
                pixels.append(read_image(str(path)))
                batch.append(path)
            except ValueError as e:
                print(f"skipped: {e}", file=sys.stderr, flush=True)
                stats.skipped.append(str(path))
        if not batch:
            continue
        for path, rgb, result in zip(batch, pixels, predictor(pixels), strict=True):
            if not isinstance(result, InstanceResult):
                raise PrelabelError("pre-labelling needs instance results; run with --set inference.task=instance")
            record = _record(result, path, categories, options)
            _write_image(
                folder / "visuals" / f"{path.stem}.png",
                draw_instances(rgb, result, categories.names, options.score_threshold),
            )
            write_labelme_file(
                str(path.with_suffix(".json")), path.name, record["height"], record["width"],
                _labelme_shapes(record, options.tolerance),
            )  # fmt: skip
            write_json(str(folder / "predictions" / f"{path.stem}.json"), record)  # the checkpoint, last
            stats.predicted += 1
            stats.instances += len(record["instances"])
            log(f"{path.name}: {len(record['instances'])} instances")

    labels = [options.label_map.get(name, name) for name in categories.names]
    labels = [label for label in dict.fromkeys(labels) if label]
    if root is None:
        root = cvat.new_document(labels)
    else:
        added = cvat.add_labels(root, labels)
        if added:
            log(f"annotations.xml: labels {added} added to <meta>; create them in the CVAT task before uploading")
    for image in [*done, *todo]:
        # shapes in the XML (corrected, or an earlier run's): kept; an unreadable image: nothing to add
        if image.name in labelled_in_xml or str(image) in stats.skipped:
            continue
        record = json.loads((folder / "predictions" / f"{image.stem}.json").read_text())
        _add_cvat_shapes(root, record, options)
    cvat.write_document(root, str(xml_path))
    return stats

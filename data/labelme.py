"""labelme annotation folders: read into COCO instances (and labelme2voc class PNGs), write pre-labels.

    source = read_labelme_dir("mydata/annotated", labels_file="mydata/labels.txt")
    source.coco            # COCO instances dict: masks as compressed RLE, categories, images
    source.problems        # one Problem per malformed shape or unusable image (file and shape named)

Rules, as labelme's own `labelme2coco.py` / `labelme2voc.py` examples:
- shapes sharing (label, group_id) form one instance (group_id null: a shape is its own instance);
- polygon, rectangle, circle, oriented_rectangle and mask shapes are rasterised with labelme's
  `labelme.utils.shape_to_mask` (PIL: fill and outline), mask shapes pasted over their box;
  line, linestrip, point and points shapes are skipped and counted;
- labels file (labelme's `labels.txt`): `__ignore__` first, then `_background_` (class 0, not a
  category), then the categories with ids 1, 2, ... in order. Without one, the categories are the
  labels found, sorted, ids 1, 2, ...;
- `__ignore__` shapes are not instances (labelme2coco drops them; the class PNGs mark them 255).

The image comes from `imagePath` (relative to the JSON; it must stay inside the folder, or the dataset
folder given as `root`), or from
`imageData` when that file is absent. labelme is imported only when a folder is read (it pulls in
Qt and onnxruntime modules, which import headless).
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path, PureWindowsPath

import numpy as np
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

from data.annotation_source import AnnotationSource, Problem, inside

IGNORE_LABEL = "__ignore__"
BACKGROUND_LABEL = "_background_"
AREA_SHAPES = ("polygon", "rectangle", "circle", "oriented_rectangle", "mask")
SKIPPED_SHAPES = ("line", "linestrip", "point", "points")
LABELME_VERSION = "5.5.0"  # the "version" our pre-label files declare (a format labelme 5 and 6 read)


class LabelmeError(ValueError):
    """The folder or labels file cannot be used at all; the message names it and the fix."""


def read_labels_file(path: str) -> list[dict]:
    """labelme `labels.txt` -> COCO categories (ids as labelme2coco gives them; specials left out)."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise LabelmeError(f"labels file {path} cannot be read ({e.strerror}); check the path") from None
    if names[:1] == [IGNORE_LABEL]:
        names = names[1:]
    if names[:1] == [BACKGROUND_LABEL]:
        names = names[1:]
    if len(set(names)) != len(names) or {IGNORE_LABEL, BACKGROUND_LABEL} & set(names):
        raise LabelmeError(
            f"labels file {path} lists a label twice or puts {IGNORE_LABEL}/{BACKGROUND_LABEL} "
            "after the first two lines; keep one label per line"
        )
    return [{"id": i, "name": name, "supercategory": "none"} for i, name in enumerate(names, 1)]


def _points(shape: dict) -> np.ndarray:
    points = np.asarray(shape.get("points"), dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise ValueError(f"points must be a list of [x, y] numbers, got {str(shape.get('points'))[:60]}")
    return points


def _labelme_shape_to_mask():
    """labelme's own `shape_to_mask`; LabelmeError with the fix when labelme (or its Qt libraries) is missing."""
    try:
        from labelme.utils import shape_to_mask
    except (ImportError, OSError) as e:  # OSError: a system library of PyQt5 (libGL.so.1) is absent
        raise LabelmeError(
            f"labelme cannot be imported ({e}); pip install -r requirements.txt, and on a bare Linux image "
            "apt-get install libgl1 libglib2.0-0"
        ) from None
    return shape_to_mask


def shape_mask(shape: dict, height: int, width: int) -> np.ndarray:
    """One labelme shape -> bool (height, width), with labelme's own rasteriser; ValueError names the fault."""
    shape_to_mask = _labelme_shape_to_mask()
    shape_type = shape.get("shape_type") or "polygon"
    points = _points(shape)
    if shape_type == "mask":
        if not isinstance(shape.get("mask"), str):
            raise ValueError("mask shape without a base64 PNG 'mask'")
        patch = np.asarray(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))).astype(bool)
        if patch.ndim != 2 or len(points) != 2:
            raise ValueError("mask shape needs a one-channel PNG and points [top-left, bottom-right]")
        (x1, y1), (x2, y2) = points.astype(int)
        if min(x1, y1) < 0:
            raise ValueError(f"mask box starts at ({x1}, {y1}), outside the image")
        if patch.shape != (y2 - y1 + 1, x2 - x1 + 1):
            raise ValueError(
                f"mask PNG is {patch.shape[1]}x{patch.shape[0]} but its box is {x2 - x1 + 1}x{y2 - y1 + 1}"
            )
        full = np.zeros((max(height, y2 + 1), max(width, x2 + 1)), bool)  # paste as labelme, then crop
        full[y1 : y2 + 1, x1 : x2 + 1] = patch
        return full[:height, :width]
    minimum = {"polygon": 3, "oriented_rectangle": 4}.get(shape_type, 2)
    if len(points) < minimum:
        raise ValueError(f"fewer than {minimum} points ({len(points)})")
    try:
        return shape_to_mask((height, width), points.tolist(), shape_type)
    except AssertionError as e:
        raise ValueError(str(e)) from None


def _image_of(json_path: Path, root: str, record: dict) -> tuple[str | None, bytes | None, str]:
    """(path on disk or None, encoded bytes or None, file_name) of a labelme record; ValueError if unusable."""
    image_path = PureWindowsPath(str(record.get("imagePath") or "")).as_posix()
    file_name = image_path
    if image_path:
        relative = os.path.relpath(json_path.parent / image_path, root)
        resolved = inside(root, relative)
        if resolved is None:
            raise ValueError(f"imagePath {image_path!r} points outside {root}; keep images inside the folder")
        file_name = Path(os.path.relpath(resolved, os.path.realpath(root))).as_posix()
        if os.path.isfile(resolved):
            return resolved, None, file_name
    if record.get("imageData"):
        try:
            return None, base64.b64decode(record["imageData"], validate=True), file_name or json_path.stem + ".png"
        except ValueError:
            raise ValueError("imageData is not valid base64") from None
    raise ValueError(f"image {image_path!r} does not exist and the file has no imageData")


def _oriented(path: str | None, data: bytes | None) -> tuple[int, int, bytes | None]:
    """(height, width, bytes to use instead of the file) with EXIF orientation applied as labelme does."""
    with Image.open(path if path is not None else io.BytesIO(data)) as image:
        if image.getexif().get(0x0112, 1) in (1, None):
            return image.height, image.width, None
        rotated = ImageOps.exif_transpose(image).convert("RGB")
        buffer = io.BytesIO()
        rotated.save(buffer, format="PNG")
        return rotated.height, rotated.width, buffer.getvalue()


def read_labelme_file(json_path: Path, root: str) -> dict:
    """One labelme JSON -> {"file_name", "path", "bytes", "height", "width", "shapes", "where"}; ValueError if unusable."""
    where = str(json_path)
    try:
        with open(json_path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not readable as JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("shapes"), list):
        raise ValueError("not a labelme file (no 'shapes' list)")
    path, data, file_name = _image_of(json_path, root, record)
    try:
        height, width, replacement = _oriented(path, data)
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"image {file_name} cannot be read ({e})") from None
    declared = (record.get("imageHeight"), record.get("imageWidth"))
    if None not in declared and tuple(declared) != (height, width):
        raise ValueError(f"imageHeight/imageWidth say {declared[1]}x{declared[0]} but the image is {width}x{height}")
    return {
        "file_name": file_name,
        "path": path,
        "bytes": replacement if replacement is not None else data,
        "height": height,
        "width": width,
        "shapes": record["shapes"],
        "where": where,
    }


def read_labelme_dir(folder: str, labels_file: str = "", root: str = "") -> AnnotationSource:
    """Every `*.json` of `folder` (labelme files) -> an AnnotationSource (COCO instances with RLE masks).

    Images must lie inside `root` (default: `folder`; give the dataset folder when the JSON files sit in
    their own folder with imagePath "../images/x.jpg"); `file_name`s are relative to it.
    """
    if not os.path.isdir(folder):
        raise LabelmeError(f"--labelme_dir {folder} is not a folder; give the folder of labelme .json files")
    json_paths = sorted(Path(folder).glob("*.json"))
    if not json_paths:
        raise LabelmeError(f"--labelme_dir {folder} holds no .json files; labelme saves one beside each image")
    _labelme_shape_to_mask()  # fail once, before any file is read, when labelme is unusable
    categories = read_labels_file(labels_file) if labels_file else None
    source = AnnotationSource(coco={"images": [], "annotations": [], "categories": []})
    records = []
    for json_path in json_paths:
        try:
            records.append(read_labelme_file(json_path, root or folder))
        except ValueError as e:
            source.problems.append(Problem("unusable labelme file", str(json_path), str(e)))
    if categories is None:
        found = {str(s.get("label")) for r in records for s in r["shapes"] if isinstance(s, dict)}
        names = sorted(found - {IGNORE_LABEL, BACKGROUND_LABEL, "None"})
        categories = [{"id": i, "name": n, "supercategory": "none"} for i, n in enumerate(names, 1)]
    source.coco["categories"] = categories
    ids = {c["name"]: c["id"] for c in categories}

    for image_id, record in enumerate(records, 1):
        height, width = record["height"], record["width"]
        source.coco["images"].append(
            {"id": image_id, "file_name": record["file_name"], "height": height, "width": width}
        )
        if record["bytes"] is not None:
            source.image_bytes[image_id] = record["bytes"]
        else:
            source.image_paths[image_id] = record["path"]
        instances: dict[tuple, np.ndarray] = {}
        for n, shape in enumerate(record["shapes"]):
            label = shape.get("label") if isinstance(shape, dict) else None
            shape_type = (shape.get("shape_type") or "polygon") if isinstance(shape, dict) else None
            where = f"{record['where']}, shape {n} ({label!r}, {shape_type})"
            if not isinstance(label, str):
                source.problems.append(Problem("bad shape", where, "no string 'label'"))
                continue
            if shape_type in SKIPPED_SHAPES:
                source.notes[f"{shape_type} shapes skipped (no area)"] += 1
                continue
            if shape_type not in AREA_SHAPES:
                source.problems.append(Problem("bad shape", where, f"unknown shape_type {shape_type!r}"))
                continue
            if label == BACKGROUND_LABEL:
                source.notes[f"{BACKGROUND_LABEL} shapes skipped (class 0, not a category)"] += 1
                continue
            if label != IGNORE_LABEL and label not in ids:
                source.problems.append(
                    Problem("unknown label", where, f"label {label!r} is not in {labels_file}; add it there")
                )
                continue
            try:
                mask = shape_mask(shape, height, width)
            except (ValueError, TypeError, OSError, SyntaxError) as e:
                source.problems.append(Problem("bad shape", where, str(e)))
                continue
            group_id = shape.get("group_id")
            key = (label, ("shape", n) if group_id is None else ("group", group_id))
            instances[key] = instances[key] | mask if key in instances else mask
        for (label, _), mask in instances.items():
            if label == IGNORE_LABEL:
                source.notes[f"{IGNORE_LABEL} regions left out (as labelme2coco does)"] += 1
                continue
            if not mask.any():
                source.problems.append(Problem("empty shape", record["where"], f"a {label!r} instance covers no pixel"))
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            source.coco["annotations"].append(
                {
                    "id": len(source.coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": ids[label],
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    return source


def class_label_map(record: dict, categories: list[dict]) -> np.ndarray:
    """labelme2voc's class PNG of one file: uint8 (H, W), 0 background, category id, 255 `__ignore__`.

    Shapes are painted in file order (a later shape covers an earlier one), as `labelme.utils.shapes_to_label`;
    malformed shapes (reported by `read_labelme_dir`) are left out.
    """
    ids = {c["name"]: c["id"] for c in categories} | {BACKGROUND_LABEL: 0, IGNORE_LABEL: 255}
    label_map = np.zeros((record["height"], record["width"]), np.uint8)
    for shape in record["shapes"]:
        if (shape.get("shape_type") or "polygon") in SKIPPED_SHAPES or shape.get("label") not in ids:
            continue
        try:
            label_map[shape_mask(shape, record["height"], record["width"])] = ids[shape["label"]]
        except (ValueError, TypeError, OSError, SyntaxError):
            continue
    return label_map


def write_class_pngs(folder: str, out_dir: str, labels_file: str = "", root: str = "") -> list[Problem]:
    """labelme2voc's class PNG (`class_label_map`) of every `*.json` of `folder`, as out_dir/<image stem>.png.

    With the categories.json of the same folder, `convert_coco_to_tfrecord.py --semantic_masks_dir out_dir`
    stores them for semantic training (0 = `_background_` and 255 = `__ignore__` are then ignored pixels).
    Returns the problems `read_labelme_dir` reports (unreadable files get no PNG, bad shapes are left out).
    """
    source = read_labelme_dir(folder, labels_file, root)
    os.makedirs(out_dir, exist_ok=True)
    for json_path in sorted(Path(folder).glob("*.json")):
        try:
            record = read_labelme_file(json_path, root or folder)
        except ValueError:
            continue
        label_map = class_label_map(record, source.coco["categories"])
        Image.fromarray(label_map).save(os.path.join(out_dir, f"{Path(record['file_name']).stem}.png"))
    return source.problems


# ------------------------------------------------------------------ writing (pre-labels)
def mask_to_polygons(mask: np.ndarray, tolerance: float, pixel_edges: bool = False) -> list[np.ndarray]:
    """Outer contours of a bool (H, W) mask, simplified by cv2.approxPolyDP(tolerance px): [(N, 2) float x, y].

    `pixel_edges=False`: vertices on the boundary pixels' centres, which labelme's rasteriser (PIL fill
    and outline, pixel i centred at i) turns back into the same pixels. `pixel_edges=True`: pixel i spans
    [i, i + 1) and vertices lie a quarter pixel inside the mask's edge (contours of the mask upsampled
    twice), which pycocotools' and CVAT's rasterisers (pixel centre inside) turn back into the same pixels.
    With tolerance 0 both round trips are exact.
    """
    import cv2

    scale = 2 if pixel_edges else 1
    grid = np.repeat(np.repeat(mask.astype(np.uint8), scale, 0), scale, 1)
    contours, _ = cv2.findContours(grid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons = []
    for contour in contours:
        simplified = cv2.approxPolyDP(contour, tolerance * scale, True) if tolerance > 0 else contour
        if len(simplified) >= 3:
            points = simplified[:, 0, :].astype(np.float64)
            polygons.append((points + 0.5) / 2 if pixel_edges else points)
    return polygons


def write_labelme_file(path: str, image_name: str, height: int, width: int, shapes: list[dict]) -> None:
    """A labelme JSON as labelme's `LabelFile.save` writes it (imageData null), atomically (temp + rename)."""
    payload = {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": image_name,
        "imageData": None,
        "imageHeight": int(height),
        "imageWidth": int(width),
    }
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False, indent=2)
    os.replace(tmp, path)


def polygon_shape(label: str, points: np.ndarray, group_id: int | None, description: str = "") -> dict:
    """One labelme polygon shape with the keys labelme writes."""
    return {
        "label": label,
        "points": [[round(float(x), 2), round(float(y), 2)] for x, y in points],
        "group_id": group_id,
        "description": description,
        "shape_type": "polygon",
        "flags": {},
        "mask": None,
    }

"""CVAT for images 1.1 XML: read into COCO instances, write pre-labels CVAT imports.

    source = read_cvat_xml("task/annotations.xml", image_dir="task/images")   # an AnnotationSource

Reading (as CVAT's own `formats/cvat.py` and datumaro's CVAT importer):
- labels from `<meta>` (task, project or job), in order, ids 1, 2, ...; skeleton labels and their
  points are not categories;
- `<polygon points="x,y;x,y;...">`, `<box xtl ytl xbr ybr [rotation]>` (box-only: its mask is the
  filled box, flagged `box_only` in the COCO `attributes`), `<ellipse cx cy rx ry [rotation]>` and
  `<mask rle left top width height>` become instances; shapes sharing a label and a non-zero
  `group_id` form one instance; polylines, points, cuboids, skeletons and tags are skipped and counted;
- `occluded`, `z_order` and the `<attribute>` children are kept in the COCO `attributes`;
- images by name: `image_dir/subset/name` (project exports) or `image_dir/name`, never outside image_dir.

CVAT's mask RLE (`cvat_sdk.masks.encode_mask`): run lengths over the mask's box (`width` x `height`,
row-major), alternating background and foreground, starting with background (a leading 0 when the
first pixel is set); CVAT writes them as "3, 5, 7".

XML is parsed with defusedxml and DTDs forbidden: entity bombs and external entities are refused.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET

import numpy as np
from pycocotools import mask as mask_utils

from data.annotation_source import AnnotationSource, Problem, inside

AREA_SHAPES = ("polygon", "box", "ellipse", "mask")
SKIPPED_SHAPES = ("polyline", "points", "cuboid", "skeleton", "tag")


class CvatError(ValueError):
    """The XML file cannot be used at all; the message names it and the reason."""


def parse_xml(path: str) -> ET.Element:
    """The root of a CVAT XML file, parsed without DTDs or entities; CvatError in one sentence otherwise."""
    import defusedxml
    from defusedxml import ElementTree as SafeET

    try:
        root = SafeET.parse(path, forbid_dtd=True).getroot()
    except OSError as e:
        raise CvatError(f"{path} cannot be read ({e.strerror}); check the path") from None
    except defusedxml.DefusedXmlException as e:
        raise CvatError(
            f"{path} refused: it declares a DTD or entities ({type(e).__name__}), which CVAT never writes "
            "and which can expand without bound or read other files; export the annotations from CVAT again"
        ) from None
    except ET.ParseError as e:
        raise CvatError(f"{path} is not well-formed XML ({e}); export the annotations from CVAT again") from None
    if root.tag != "annotations":
        raise CvatError(f"{path} is not CVAT XML (root <{root.tag}>, expected <annotations>)")
    return root


def meta_labels(root: ET.Element) -> list[str]:
    """Category names from `<meta>` in order (skeletons and their points left out)."""
    labels = next(root.find("meta").iter("labels"), None) if root.find("meta") is not None else None
    names = []
    for label in labels.findall("label") if labels is not None else []:
        if label.find("parent") is not None or (label.findtext("type") or "") == "skeleton":
            continue
        names.append(label.findtext("name") or "")
    return names


# ------------------------------------------------------------------ geometry
def rle_decode(rle: str, width: int, height: int) -> np.ndarray:
    """CVAT mask RLE ("3, 5, 7, ...") -> bool (height, width) of the mask's box; ValueError if inconsistent."""
    counts = np.array([int(v) for v in rle.replace(" ", "").split(",") if v != ""], np.int64)
    if (counts < 0).any() or counts.sum() != width * height:
        raise ValueError(f"rle runs sum to {counts.sum()}, not width x height = {width * height}")
    values = np.arange(len(counts)) % 2 == 1  # background first
    return np.repeat(values, counts).reshape(height, width)


def rle_encode(mask: np.ndarray) -> tuple[str, int, int, int, int]:
    """bool (H, W) -> (rle, left, top, width, height) over the mask's tight box, as CVAT writes it."""
    ys, xs = np.nonzero(mask)
    top, left, bottom, right = ys.min(), xs.min(), ys.max(), xs.max()
    flat = mask[top : bottom + 1, left : right + 1].ravel()
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    if flat[0]:
        runs = np.concatenate([[0], runs])
    return ", ".join(str(int(v)) for v in runs), int(left), int(top), int(right - left + 1), int(bottom - top + 1)


def _floats(element: ET.Element, *names: str) -> list[float]:
    values = [float(element.attrib[name]) for name in names]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"non-finite coordinate in {names}")
    return values


def _rotated(points: np.ndarray, degrees: float, centre: np.ndarray) -> np.ndarray:
    """Points rotated clockwise on screen (y down) by `degrees` about `centre`, as CVAT's `rotation`."""
    a = math.radians(degrees)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (points - centre) @ rotation.T + centre


def shape_polygon(element: ET.Element) -> np.ndarray:
    """(N, 2) outline of a polygon, box or ellipse element; ValueError names the fault."""
    if element.tag == "polygon":
        pairs = [p.split(",") for p in element.attrib["points"].split(";") if p.strip()]
        points = np.array([[float(x), float(y)] for x, y in pairs])
        if len(points) < 3:
            raise ValueError(f"fewer than 3 points ({len(points)})")
        if not np.isfinite(points).all():
            raise ValueError("non-finite point")
        return points
    rotation = float(element.attrib.get("rotation", 0.0))
    if element.tag == "box":
        x0, y0, x1, y1 = _floats(element, "xtl", "ytl", "xbr", "ybr")
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"empty box xtl={x0} ytl={y0} xbr={x1} ybr={y1}")
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    else:  # ellipse
        cx, cy, rx, ry = _floats(element, "cx", "cy", "rx", "ry")
        angles = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        points = np.stack([cx + abs(rx) * np.cos(angles), cy + abs(ry) * np.sin(angles)], 1)
    return _rotated(points, rotation, points.mean(0)) if rotation else points


def shape_mask(element: ET.Element, height: int, width: int) -> np.ndarray:
    """bool (height, width) of one polygon / box / ellipse / mask element (polygons via pycocotools)."""
    if element.tag == "mask":
        left, top, box_width, box_height = (int(float(element.attrib[k])) for k in ("left", "top", "width", "height"))
        if left < 0 or top < 0 or left + box_width > width or top + box_height > height:
            raise ValueError(f"mask box {left},{top} {box_width}x{box_height} leaves the {width}x{height} image")
        full = np.zeros((height, width), bool)
        full[top : top + box_height, left : left + box_width] = rle_decode(element.attrib["rle"], box_width, box_height)
        return full
    flat = shape_polygon(element).ravel().tolist()
    return mask_utils.decode(mask_utils.frPyObjects([flat], height, width))[..., 0].astype(bool)


# ------------------------------------------------------------------ reading
def image_path(image_dir: str, name: str, subset: str | None) -> str | None:
    """The image file of an `<image name subset>` inside image_dir (None when the name leaves it)."""
    candidates = [os.path.join(subset, name)] if subset else []
    for relative in [*candidates, name]:
        resolved = inside(image_dir, relative)
        if resolved is None:
            return None
        if os.path.isfile(resolved):
            return resolved
    return inside(image_dir, name)


def read_cvat_xml(path: str, image_dir: str) -> AnnotationSource:
    """A CVAT for images 1.1 XML file -> AnnotationSource (COCO instances, RLE masks, attributes kept)."""
    root = parse_xml(path)
    images = root.findall("image")
    if not images:
        raise CvatError(f"{path} has no <image> elements; export the task as 'CVAT for images 1.1'")
    names = meta_labels(root)
    categories = [{"id": i, "name": name, "supercategory": "none"} for i, name in enumerate(names, 1)]
    ids = {name: i for i, name in enumerate(names, 1)}
    source = AnnotationSource(coco={"images": [], "annotations": [], "categories": categories})
    if root.findall("track"):
        source.notes["tracks skipped (CVAT for video)"] += len(root.findall("track"))

    for image in images:
        name, subset = image.get("name", ""), image.get("subset")
        where = f"{path} (image {name!r})"
        try:
            height, width = int(image.attrib["height"]), int(image.attrib["width"])
        except (KeyError, ValueError):
            source.problems.append(Problem("bad image", where, "<image> needs integer width and height"))
            continue
        file_path = image_path(image_dir, name, subset)
        if file_path is None:
            source.problems.append(
                Problem("image outside the folder", where, f"name {name!r} leaves {image_dir}; refused")
            )
            continue
        image_id = len(source.coco["images"]) + 1
        file_name = os.path.relpath(file_path, os.path.realpath(image_dir)).replace(os.sep, "/")
        source.coco["images"].append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        source.image_paths[image_id] = file_path

        instances: dict[tuple, dict] = {}
        for n, element in enumerate(image):
            shape_where = f"{where}, <{element.tag}> {n} (label {element.get('label')!r})"
            if element.tag in SKIPPED_SHAPES:
                source.notes[f"{element.tag} shapes skipped (no area)"] += 1
                continue
            if element.tag not in AREA_SHAPES:
                source.problems.append(Problem("bad shape", shape_where, f"unknown element <{element.tag}>"))
                continue
            label = element.get("label", "")
            if label not in ids:
                source.problems.append(Problem("unknown label", shape_where, "label is not among the <meta> labels"))
                continue
            try:
                mask = shape_mask(element, height, width)
            except (KeyError, ValueError) as e:
                reason = f"missing attribute {e}" if isinstance(e, KeyError) else str(e)
                source.problems.append(Problem("bad shape", shape_where, reason))
                continue
            group = int(element.get("group_id", "0") or 0)
            key = (label, group) if group else (label, ("shape", n))
            if key in instances:
                instances[key]["mask"] |= mask
                instances[key].pop("bbox", None)  # a box's exact bbox no longer covers the group
                instances[key]["attributes"]["occluded"] |= element.get("occluded") == "1"
                continue
            attributes = {a.get("name"): a.text or "" for a in element.findall("attribute")}
            attributes.update(occluded=element.get("occluded") == "1", z_order=int(element.get("z_order", 0)))
            instances[key] = {"label": label, "mask": mask, "attributes": attributes}
            if element.tag == "box":
                attributes["box_only"] = True
                source.notes["box-only annotations (mask = the filled box)"] += 1
                if not float(element.get("rotation", 0)):
                    x0, y0, x1, y1 = _floats(element, "xtl", "ytl", "xbr", "ybr")
                    instances[key]["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        for instance in instances.values():
            if not instance["mask"].any():
                source.problems.append(Problem("empty shape", where, f"a {instance['label']!r} shape covers no pixel"))
                continue
            rle = mask_utils.encode(np.asfortranarray(instance["mask"].astype(np.uint8)))
            source.coco["annotations"].append(
                {
                    "id": len(source.coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": ids[instance["label"]],
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)),
                    "bbox": instance.get("bbox") or [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                    "attributes": instance["attributes"],
                }
            )
    return source


# ------------------------------------------------------------------ writing
def new_document(labels: list[str], task_name: str = "pre-labels") -> ET.Element:
    """An empty CVAT for images 1.1 document: version and a task `<meta>` with the labels."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    for key, value in (("name", task_name), ("size", "0"), ("mode", "annotation"), ("overlap", "0")):
        ET.SubElement(task, key).text = value
    ET.SubElement(task, "labels")
    add_labels(root, labels)
    return root


def add_labels(root: ET.Element, names: list[str]) -> list[str]:
    """Appends the labels `<meta>` lacks (CVAT's `<label><name/><attributes/></label>`); returns them."""
    meta = root.find("meta")
    labels = next(meta.iter("labels"), None) if meta is not None else None
    if labels is None:
        raise CvatError("the CVAT XML has no <meta> ... <labels>; export it from CVAT again")
    present = set(meta_labels(root))
    added = []
    for name in names:
        if name not in present:
            label = ET.SubElement(labels, "label")
            ET.SubElement(label, "name").text = name
            ET.SubElement(label, "attributes")
            present.add(name)
            added.append(name)
    return added


def image_element(root: ET.Element, name: str, width: int, height: int) -> ET.Element:
    """The `<image>` of `name`, emptied of shapes (attributes kept), or a new one with the next id."""
    for image in root.findall("image"):
        if image.get("name") == name:
            for child in list(image):
                image.remove(child)
            return image
    ids = [int(image.get("id", -1)) for image in root.findall("image")]
    attributes = {"id": str(max(ids, default=-1) + 1), "name": name, "width": str(width), "height": str(height)}
    return ET.SubElement(root, "image", attributes)


def add_polygon(image: ET.Element, label: str, points: np.ndarray, group_id: int = 0) -> None:
    """`<polygon label source occluded points z_order [group_id]>` with CVAT's "x,y;x,y" at 2 decimals."""
    attributes = {
        "label": label,
        "source": "auto",
        "occluded": "0",
        "points": ";".join(f"{x:.2f},{y:.2f}" for x, y in points),
        "z_order": "0",
    }
    if group_id:
        attributes["group_id"] = str(group_id)
    ET.SubElement(image, "polygon", attributes)


def add_mask(image: ET.Element, label: str, mask: np.ndarray) -> None:
    """`<mask label source occluded rle left top width height z_order>` of a non-empty bool (H, W) mask."""
    rle, left, top, width, height = rle_encode(mask)
    attributes = {"label": label, "source": "auto", "occluded": "0", "rle": rle}
    attributes.update(left=str(left), top=str(top), width=str(width), height=str(height), z_order="0")
    ET.SubElement(image, "mask", attributes)


def write_document(root: ET.Element, path: str) -> None:
    """Indented UTF-8 XML with a declaration, written atomically (temp + rename)."""
    images = root.findall("image")
    images.sort(key=lambda image: int(image.get("id", 0)))
    for image in root.findall("image"):
        root.remove(image)
    root.extend(images)
    ET.indent(root, space="  ")
    tmp = f"{path}.tmp"
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, path)

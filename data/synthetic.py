"""A synthetic segmentation dataset in COCO format: coloured shapes in a textured sky-and-ground scene.

    from data.synthetic import SyntheticSpec, write_dataset
    write_dataset("datasets/synthetic", SyntheticSpec(seed=0), {"train": 400, "val": 100})

Every image is made from its own random stream, seeded by (seed, split name, image index), so the
output is the same on every run and a split of N images is the first N images of a larger one.

Categories (thing ids first, so a thing's contiguous index is the same in the instance and the
panoptic category lists):
    1 circle, 2 rectangle, 3 triangle, 4 star   things: varied size, aspect, rotation, colour
    5 sky, 6 ground                             stuff: split by a wavy horizon, textured

Scenes: a sky (blue-grey gradient with soft clouds) above a ground (brown, striped and grainy), and
`min_objects` to `max_objects` things painted back to front, so later things occlude earlier ones.
A thing left with less than `min_visible_fraction` of its area visible is not drawn at all; the
frontmost thing of image i is of class i % 4, so every split of at least 4 images has every class.

Learnability: each thing class has its own hue family (circle red, rectangle green, triangle violet,
star yellow), jittered in hue, saturation and brightness and shaded across the object, so colour and
shape both identify the class and a very small model learns it on a CPU in minutes.
`colour_by_class=False` paints every thing in any hue, leaving shape as the only cue.

Layout of the output folder (the COCO layout, with `{split}` in place of `train2017`):
    {split}/000001.jpg                        images (`image_format` "jpg" or "png")
    annotations/instances_{split}.json        things only; visible masks as compressed RLE, iscrowd 0
    annotations/panoptic_{split}.json         COCO panoptic: segments_info with id, category_id,
    annotations/panoptic_{split}/000001.png     iscrowd, area, bbox; PNG pixel id = R + 256 G + 256^2 B
    annotations/semantic_{split}/000001.png   8-bit label PNG, pixel = category id (every pixel labelled)
    categories.json                           all six categories with isthing
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

THING_CLASSES = ("circle", "rectangle", "triangle", "star")
STUFF_CLASSES = ("sky", "ground")
CATEGORIES = [
    {"id": i + 1, "name": name, "supercategory": "shape", "isthing": 1} for i, name in enumerate(THING_CLASSES)
] + [
    {"id": len(THING_CLASSES) + i + 1, "name": name, "supercategory": "background", "isthing": 0}
    for i, name in enumerate(STUFF_CLASSES)
]
SKY_ID, GROUND_ID = len(THING_CLASSES) + 1, len(THING_CLASSES) + 2
THING_HUES = (0.0, 120.0, 285.0, 52.0)  # degrees: red circle, green rectangle, violet triangle, yellow star


@dataclass(frozen=True)
class SyntheticSpec:
    """What the generated images look like."""

    height: int = 128
    width: int = 128
    min_objects: int = 2  # things per image (fewer when a placement is rejected as too occluded)
    max_objects: int = 6
    min_radius: float = 0.08  # thing radius, as a fraction of min(height, width)
    max_radius: float = 0.22
    min_visible_fraction: float = 0.3  # a thing with less of its area visible is not drawn
    colour_by_class: bool = True  # False: any hue for any class (shape is the only cue)
    image_format: str = "jpg"  # "jpg" (quality 95, no chroma subsampling) or "png"
    seed: int = 0

    def validate(self) -> SyntheticSpec:
        if min(self.height, self.width) < 32:
            raise ValueError(f"image size {self.height}x{self.width} is too small; use at least 32x32")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0 < self.min_radius <= self.max_radius <= 0.5:
            raise ValueError(f"need 0 < min_radius <= max_radius <= 0.5, got {self.min_radius}, {self.max_radius}")
        if self.min_radius * min(self.height, self.width) < 4:
            raise ValueError(
                f"the smallest thing radius is {self.min_radius * min(self.height, self.width):.1f} pixels; "
                "raise min_radius or the image size so that it is at least 4"
            )
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")
        return self


@dataclass
class Thing:
    category_id: int
    mask: np.ndarray  # bool (H, W): the visible pixels
    full_mask: np.ndarray  # bool (H, W): the whole shape, occluded pixels included


@dataclass
class Scene:
    """One image and its segments: `things` in painting order (back to front, so a thing may hide
    earlier ones), `stuff` category id -> mask. Visible and stuff masks are disjoint and cover the image."""

    image: np.ndarray  # uint8 (H, W, 3) RGB
    things: list[Thing]
    stuff: dict[int, np.ndarray]  # bool (H, W) per stuff category present


# ------------------------------------------------------------------ drawing
def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """One colour, hue in degrees, saturation and value in 0..1 -> float RGB 0..255."""
    hsv = np.array([[[hue % 360.0, saturation, value]]], np.float32)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] * 255.0


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise (H, W) in about -1..1: a cells x cells random grid, bicubically enlarged."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Float RGB (H, W, 3) sky over ground, and the bool sky mask (H, W)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = (
        height * rng.uniform(0.35, 0.65)
        + height
        * rng.uniform(0.02, 0.08)
        * np.sin(2 * np.pi * xs[0] / (width * rng.uniform(0.5, 1.5)) + rng.uniform(0, 2 * np.pi))
        + rng.uniform(-0.25, 0.25) * (xs[0] - width / 2)
    )
    sky = ys < horizon[None, :]

    sky_colour = _hsv_to_rgb(rng.uniform(195, 225), rng.uniform(0.2, 0.4), rng.uniform(0.75, 0.95))
    sky_light = 0.85 + 0.15 * ys / height + 0.08 * _smooth_noise(rng, height, width, 4)  # lighter near the horizon
    sky_rgb = sky_colour * sky_light[..., None]

    ground_colour = _hsv_to_rgb(rng.uniform(22, 40), rng.uniform(0.3, 0.5), rng.uniform(0.35, 0.55))
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 14)
    stripes = np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period)
    grain = rng.normal(0.0, 1.0, (height, width)).astype(np.float32)
    ground_rgb = ground_colour + (12.0 * stripes + 10.0 * grain)[..., None]
    return np.where(sky[..., None], sky_rgb, ground_rgb), sky


def _outline(name: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (V, 2) of a shape centred at 0 with circumradius `radius`, before rotation."""
    if name == "circle":
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return radius * np.stack([np.cos(angles), np.sin(angles)], -1)
    if name == "rectangle":
        half_width = radius * 0.85
        half_height = half_width * rng.uniform(0.5, 1.0)
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [half_width, half_height]
    if name == "triangle":
        angles = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return radius * np.stack([np.cos(angles), np.sin(angles)], -1)
    if name == "star":  # five points, inner radius 0.45
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
        return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], -1)
    raise ValueError(f"unknown shape {name!r}")


def _place_thing(
    spec: SyntheticSpec, rng: np.random.Generator, class_index: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """A randomly sized, rotated and placed thing: (mask bool (H, W), centre (x, y), radius)."""
    height, width = spec.height, spec.width
    radius = min(height, width) * rng.uniform(spec.min_radius, spec.max_radius)
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height])
    vertices = _outline(THING_CLASSES[class_index], radius, rng) @ rotation.T + centre
    mask = np.zeros((height, width), np.uint8)
    # Our pixel (row i, column j) spans [j, j + 1) x [i, i + 1); OpenCV puts it at the point (j, i).
    points = np.round((vertices - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(mask, [points], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool), centre, radius


def _thing_colour(spec: SyntheticSpec, rng: np.random.Generator, class_index: int) -> np.ndarray:
    hue = THING_HUES[class_index] + rng.uniform(-10, 10) if spec.colour_by_class else rng.uniform(0, 360)
    return _hsv_to_rgb(hue, rng.uniform(0.6, 0.95), rng.uniform(0.55, 1.0))


def make_scene(spec: SyntheticSpec, split: str, index: int) -> Scene:
    """Image `index` of `split`: the same for the same (spec, split, index), whatever else is generated."""
    rng = np.random.default_rng([spec.seed, zlib.crc32(split.encode()), index])
    height, width = spec.height, spec.width
    image, sky = _background(rng, height, width)

    # Sample front to back: a new thing goes behind those already placed and is kept only when enough
    # of it stays visible, so a rejected thing changes nothing else.
    wanted = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    front_to_back: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, float]] = []
    covered = np.zeros((height, width), bool)
    for attempt in range(3 * wanted):
        if len(front_to_back) == wanted:
            break
        class_index = index % len(THING_CLASSES) if attempt == 0 else int(rng.integers(len(THING_CLASSES)))
        mask, centre, radius = _place_thing(spec, rng, class_index)
        visible = mask & ~covered
        if visible.sum() < max(spec.min_visible_fraction * mask.sum(), 8):
            continue
        front_to_back.append((class_index, visible, mask, centre, radius))
        covered |= mask

    things = []
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for class_index, visible, mask, centre, radius in reversed(front_to_back):
        colour = _thing_colour(spec, rng, class_index)
        light_angle = rng.uniform(0, 2 * np.pi)
        along = ((xs - centre[0]) * np.cos(light_angle) + (ys - centre[1]) * np.sin(light_angle)) / radius
        shaded = colour * (1.0 + 0.15 * np.clip(along, -1, 1))[..., None]
        image = np.where(visible[..., None], shaded, image)
        things.append(Thing(category_id=class_index + 1, mask=visible, full_mask=mask))

    image = image + rng.normal(0.0, 3.0, image.shape)  # sensor noise over everything
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    stuff = {SKY_ID: sky & ~covered, GROUND_ID: ~sky & ~covered}
    return Scene(image=image, things=things, stuff={k: v for k, v in stuff.items() if v.any()})


# ------------------------------------------------------------------ writing
def _bbox(mask: np.ndarray) -> list[float]:
    """COCO [x, y, width, height] of a bool mask's pixels."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _save_image(image: np.ndarray, path: str) -> None:
    if path.endswith(".png"):
        Image.fromarray(image).save(path, optimize=False)
    else:
        Image.fromarray(image).save(path, quality=95, subsampling=0)


def write_split(out_dir: str, spec: SyntheticSpec, split: str, count: int) -> dict:
    """Writes `count` images of `split` and their annotations; returns {"images", "things", "segments"} counts."""
    spec.validate()
    image_dir = os.path.join(out_dir, split)
    annotation_dir = os.path.join(out_dir, "annotations")
    panoptic_dir = os.path.join(annotation_dir, f"panoptic_{split}")
    semantic_dir = os.path.join(annotation_dir, f"semantic_{split}")
    for folder in (image_dir, panoptic_dir, semantic_dir):
        os.makedirs(folder, exist_ok=True)

    images, instances, panoptic = [], [], []
    segments_written = 0
    for index in range(count):
        scene = make_scene(spec, split, index)
        image_id = index + 1
        stem = f"{image_id:06d}"
        file_name = f"{stem}.{spec.image_format}"
        _save_image(scene.image, os.path.join(image_dir, file_name))
        images.append({"id": image_id, "file_name": file_name, "height": spec.height, "width": spec.width})

        segment_ids = np.zeros((spec.height, spec.width), np.uint32)
        semantic = np.zeros((spec.height, spec.width), np.uint8)
        segments_info = []
        segments = [(t.category_id, t.mask) for t in scene.things] + list(scene.stuff.items())
        for segment_id, (category_id, mask) in enumerate(segments, 1):
            is_thing = segment_id <= len(scene.things)
            area, bbox = int(mask.sum()), _bbox(mask)
            segment_ids[mask] = segment_id
            semantic[mask] = category_id
            segments_info.append(
                {"id": segment_id, "category_id": category_id, "iscrowd": 0, "area": area, "bbox": bbox}
            )
            if is_thing:
                instances.append(
                    {
                        "id": len(instances) + 1,
                        "image_id": image_id,
                        "category_id": category_id,
                        "segmentation": _rle(mask),
                        "area": area,
                        "bbox": bbox,
                        "iscrowd": 0,
                    }
                )
        segments_written += len(segments_info)
        rgb = np.stack([segment_ids % 256, segment_ids // 256 % 256, segment_ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(os.path.join(panoptic_dir, f"{stem}.png"))
        Image.fromarray(semantic).save(os.path.join(semantic_dir, f"{stem}.png"))
        panoptic.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments_info})

    info = {"description": "synthetic shapes (data/synthetic.py)", "split": split, "spec": asdict(spec)}
    things = [c for c in CATEGORIES if c["isthing"]]
    _write_json(
        os.path.join(annotation_dir, f"instances_{split}.json"),
        {"info": info, "licenses": [], "images": images, "annotations": instances, "categories": things},
    )
    _write_json(
        os.path.join(annotation_dir, f"panoptic_{split}.json"),
        {"info": info, "licenses": [], "images": images, "annotations": panoptic, "categories": CATEGORIES},
    )
    return {"images": count, "things": len(instances), "segments": segments_written}


def _write_json(path: str, values: dict) -> None:
    with open(path, "w") as f:
        json.dump(values, f, separators=(",", ":"))


def write_dataset(out_dir: str, spec: SyntheticSpec, splits: dict[str, int]) -> dict[str, dict]:
    """Writes every split ({name: image count}) and categories.json; returns the counts per split."""
    spec.validate()
    os.makedirs(out_dir, exist_ok=True)
    counts = {split: write_split(out_dir, spec, split, count) for split, count in splits.items()}
    _write_json(os.path.join(out_dir, "categories.json"), {"categories": CATEGORIES})
    return counts

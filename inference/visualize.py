"""Overlays a person can read: instance, panoptic and semantic results drawn on the image (OpenCV).

- instance: each instance a colour, its outline, "class 93%" on a tag at the top of its box;
- panoptic: each segment a colour (distinct within the image), boundaries, every segment tagged at
  its innermost pixel with its class name ("sky (stuff)" for stuff);
- semantic: each class a colour (distinct within the image), class boundaries, and a legend panel
  (colour, name, share of the image).

All functions take and return (H, W, 3) uint8 RGB.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from inference.postprocess import InstanceResult, PanopticResult, SemanticResult

FONT = cv2.FONT_HERSHEY_SIMPLEX
MASK_OPACITY = 0.55


def palette(count: int, offset: int = 0) -> np.ndarray:
    """`count` well separated saturated colours (golden-ratio hue steps), (count, 3) uint8 RGB."""
    colours = []
    for i in range(offset, offset + count):
        hue = (i * 0.618033988749895) % 1.0
        value = 0.95 if i % 2 == 0 else 0.75
        colours.append(colorsys.hsv_to_rgb(hue, 0.85, value))
    return (np.array(colours).reshape(-1, 3) * 255).astype(np.uint8)


def text_style(shape) -> tuple[float, int]:
    """Font scale and thickness for an image of `shape`: text height grows with the image (about 2% of its
    longer side, so a label reads the same on a 12-megapixel photo viewed whole), never below a legible 0.4."""
    size = max(shape[:2])
    scale = max(0.4, size / 1100)
    return scale, max(1, round(scale * 1.6))


def draw_tag(canvas: np.ndarray, text: str, x: int, y: int, colour, anchor: str = "bottom-left") -> None:
    """Text on a filled box of `colour` (black or white text by brightness), kept inside the image.

    anchor "bottom-left": the tag sits above (x, y); "center": centred on (x, y).
    """
    scale, thickness = text_style(canvas.shape)
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    pad = max(2, thickness + 1)
    box_w, box_h = width + 2 * pad, height + baseline + 2 * pad
    if anchor == "center":
        x0, y0 = x - box_w // 2, y - box_h // 2
    else:
        x0, y0 = x, y - box_h
        if y0 < 0:  # no room above: put it inside, below the top edge
            y0 = y
    x0 = int(np.clip(x0, 0, max(0, canvas.shape[1] - box_w)))
    y0 = int(np.clip(y0, 0, max(0, canvas.shape[0] - box_h)))
    colour = tuple(int(c) for c in colour)
    cv2.rectangle(canvas, (x0, y0), (x0 + box_w, y0 + box_h), colour, thickness=-1)
    ink = (0, 0, 0) if (0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]) > 140 else (255, 255, 255)
    cv2.putText(canvas, text, (x0 + pad, y0 + pad + height), FONT, scale, ink, thickness, cv2.LINE_AA)


def _blend(canvas: np.ndarray, mask: np.ndarray, colour) -> None:
    canvas[mask] = (canvas[mask] * (1 - MASK_OPACITY) + np.asarray(colour) * MASK_OPACITY).astype(np.uint8)


def _outline(canvas: np.ndarray, mask: np.ndarray, colour, thickness: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in colour), thickness, cv2.LINE_AA)


def _segment_boundaries(label_map: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label."""
    edge = np.zeros(label_map.shape, bool)
    edge[:, :-1] |= label_map[:, :-1] != label_map[:, 1:]
    edge[:-1, :] |= label_map[:-1, :] != label_map[1:, :]
    return cv2.dilate(edge.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)


def _innermost_pixel(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from its border: a label there sits on the segment."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return int(x), int(y)


def draw_instances(image: np.ndarray, result: InstanceResult, class_names, score_threshold: float = 0.5) -> np.ndarray:
    """Instances scoring >= `score_threshold`: coloured masks, outlines, "class 93%" tags."""
    canvas = image.copy()
    chosen = np.nonzero(result.scores >= score_threshold)[0]
    areas = np.array([np.count_nonzero(result.masks[i]) for i in chosen], np.int64)  # no copy of the masks
    chosen = chosen[np.argsort(-areas, kind="stable")]  # large first, small on top
    colours = palette(len(chosen))
    _, thickness = text_style(image.shape)
    for colour, i in zip(colours, chosen, strict=True):
        _blend(canvas, result.masks[i], colour)
    for colour, i in zip(colours, chosen, strict=True):
        _outline(canvas, result.masks[i], colour, thickness + 1)
    for colour, i in zip(colours, chosen, strict=True):
        x0, y0 = result.boxes[i, :2]
        draw_tag(canvas, f"{class_names[result.labels[i]]} {100 * result.scores[i]:.0f}%", int(x0), int(y0), colour)
    return canvas


def draw_panoptic(image: np.ndarray, result: PanopticResult, class_names) -> np.ndarray:
    """One colour per segment (stuff classes are merged: one each), white boundaries, a tag on every segment."""
    canvas = image.copy()
    colours = palette(len(result.segments))  # stuff classes are one segment each already
    for colour, segment in zip(colours, result.segments, strict=True):
        _blend(canvas, result.segment_ids == segment["id"], colour)
    canvas[_segment_boundaries(result.segment_ids)] = 255
    for colour, segment in zip(colours, result.segments, strict=True):
        x, y = _innermost_pixel(result.segment_ids == segment["id"])
        name = class_names[segment["category"]]
        draw_tag(canvas, name if segment["isthing"] else f"{name} (stuff)", x, y, colour, anchor="center")
    return canvas


def draw_semantic(image: np.ndarray, result: SemanticResult, class_names) -> np.ndarray:
    """Class colours over the image and a legend panel on the right (classes by area, with shares)."""
    canvas = image.copy()
    present, areas = np.unique(result.labels, return_counts=True)
    order = np.argsort(-areas, kind="stable")
    present, areas = present[order], areas[order]
    colours = palette(len(present))  # distinct within the image, largest class first
    for k, colour in zip(present, colours, strict=True):
        _blend(canvas, result.labels == k, colour)
    canvas[_segment_boundaries(result.labels)] = 255

    scale, thickness = text_style(image.shape)
    row = int(30 * scale) + 8
    texts = [f"{class_names[k]} {100 * area / result.labels.size:.1f}%" for k, area in zip(present, areas, strict=True)]
    text_width = max(cv2.getTextSize(t, FONT, scale, thickness)[0][0] for t in texts)
    panel = np.full((max(image.shape[0], row * len(texts) + row), text_width + 3 * row, 3), 255, np.uint8)
    for r, (colour, text) in enumerate(zip(colours, texts, strict=True)):
        top = row // 2 + r * row
        cv2.rectangle(panel, (row // 2, top), (row // 2 + row - 8, top + row - 8), tuple(int(c) for c in colour), -1)
        cv2.putText(panel, text, (2 * row, top + row - 12), FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    if panel.shape[0] > canvas.shape[0]:  # long legend: extend the image with white below
        canvas = np.pad(canvas, ((0, panel.shape[0] - canvas.shape[0]), (0, 0), (0, 0)), constant_values=255)
    return np.concatenate([canvas, panel], axis=1)

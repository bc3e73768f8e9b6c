"""What every annotation reader shares (COCO files, labelme folders, CVAT XML): a problem report and a
dataset read from an annotation tool."""

from __future__ import annotations

import collections
import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Problem:
    """One piece of bad input: `kind` is counted, `file` and `reason` are printed."""

    kind: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"skipped ({self.kind}): {self.file}: {self.reason}"


@dataclasses.dataclass
class AnnotationSource:
    """A dataset read from an annotation tool, ready for the converter.

    coco: COCO instances dict; `file_name` is relative to the folder read.
    image_paths: image id -> path of the image file on disk (absent when it comes from `image_bytes`).
    image_bytes: image id -> encoded image (labelme `imageData`, or an EXIF-rotated image re-encoded).
    problems: bad input, one Problem each (skipped shapes or images).
    notes: counts of things left out on purpose (e.g. "line shapes skipped").
    """

    coco: dict
    image_paths: dict[int, str] = dataclasses.field(default_factory=dict)
    image_bytes: dict[int, bytes] = dataclasses.field(default_factory=dict)
    problems: list[Problem] = dataclasses.field(default_factory=list)
    notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def inside(root: str, relative: str) -> str | None:
    """The real path of `relative` under `root`, or None when it leaves `root` (`..`, absolute, links)."""
    root_real = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root_real, relative))
    return path if os.path.commonpath([root_real, path]) == root_real and path != root_real else None

"""Problems an image file can have that OpenCV passes over silently.

OpenCV decodes a truncated JPEG without an error (libjpeg prints a nameless "Premature end of JPEG
file" and the missing part comes out grey); `truncation(path)` finds it by letting PIL decode the
JPEG's whole data stream (at 1/8 scale, so a 12-megapixel photo takes a few milliseconds).
"""

from __future__ import annotations

import sys

from PIL import Image


def truncation(path: str) -> str | None:
    """A sentence naming `path` if it is a truncated JPEG, else None (other formats fail to read instead)."""
    try:
        with Image.open(path) as image:
            if image.format != "JPEG":
                return None
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except OSError as e:
        if "truncated" not in str(e):
            return None  # unreadable: the reader reports it
        return f"{path} is truncated ({e}); its missing part is grey in the results, so re-copy or re-export it"
    return None


def warn_if_truncated(path: str) -> None:
    """Prints `warning: <path> is truncated ...` to stderr when it is."""
    problem = truncation(path)
    if problem:
        print(f"warning: {problem}", file=sys.stderr, flush=True)

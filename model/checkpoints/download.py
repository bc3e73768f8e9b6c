"""Model-zoo downloads: cached once, checked against the md5 prefix a zoo file name carries and a sha256.

path = download("coco_instance_r50")   # or a URL
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.request

from model.checkpoints.errors import CheckpointError
from model_zoo import MODEL_ZOO, NOT_PUBLISHED

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "mask2former_keras")


def digests_of(path: str) -> tuple[str, str]:
    """(md5, sha256) hex digests of a file, read once."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
            sha256.update(chunk)
    return md5.hexdigest(), sha256.hexdigest()


def md5_prefix_of_name(url_or_path: str) -> str | None:
    """The md5 prefix a model-zoo file name carries (`model_final_3c8ec9.pkl` -> "3c8ec9"), or None."""
    match = re.search(r"_([0-9a-f]{6})\.pkl$", url_or_path)
    return match[1] if match else None


def download(name_or_url: str, cache_dir: str = DEFAULT_CACHE_DIR, sha256: str | None = None) -> str:
    """Returns a local path to a model-zoo file, downloading it once into `cache_dir`.

    Args:
        name_or_url: a key of `MODEL_ZOO`, or a URL (http, https or file).
        sha256: expected hex digest. Without it, the digest of the first download is recorded beside the
            file (`<file>.sha256`) and every later use is checked against it, so a corrupted or
            truncated cache entry is caught rather than loaded.

    A file name that ends in `_<6 hex digits>.pkl` (every model-zoo file) carries the start of the
    file's md5: it is checked after the download and for cached files. The file is written to a
    temporary name and moved into place only when complete and verified.
    """
    if name_or_url in NOT_PUBLISHED:
        raise CheckpointError(f"{name_or_url}: {NOT_PUBLISHED[name_or_url]}")
    url = MODEL_ZOO.get(name_or_url, name_or_url)
    if "://" not in url:
        raise ValueError(f"{name_or_url!r} is neither a model-zoo name ({', '.join(MODEL_ZOO)}) nor a URL")
    path = os.path.join(cache_dir, *url.split("://", 1)[1].split("/")[-2:])
    record, md5_prefix = path + ".sha256", md5_prefix_of_name(url)
    if os.path.isfile(path):
        expected = sha256 or (open(record).read().strip() if os.path.isfile(record) else None)
        md5, actual = digests_of(path)
        if md5_prefix is not None and not md5.startswith(md5_prefix):
            raise CheckpointError(
                f"cached {path} has md5 {md5}, but its name says it starts with {md5_prefix}; the file is "
                "damaged or truncated: delete it and download again"
            )
        if expected is None or actual == expected:
            return path
        raise CheckpointError(f"cached {path} has sha256 {actual}, expected {expected}; delete it and download again")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        md5, actual = digests_of(tmp)
        if md5_prefix is not None and not md5.startswith(md5_prefix):
            raise CheckpointError(
                f"download of {url} has md5 {md5}, but the file name says it starts with {md5_prefix}; "
                "the download is damaged or truncated: try again"
            )
        if sha256 is not None and actual != sha256:
            raise CheckpointError(f"download of {url} has sha256 {actual}, expected {sha256}; try again")
        os.replace(tmp, path)
    except OSError as e:
        raise CheckpointError(f"cannot download {url} ({e}); download it by hand and pass the local path") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with open(record, "w") as f:
        f.write(actual + "\n")
    return path

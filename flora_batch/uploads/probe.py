"""Reading local input files at plan time: where each is, its SHA-256, size and real type.

``FileProbe`` is the ``sources.Probe`` that ``pipeline.prepare`` hands to the pure
``sources.MediaInputs``: the only I/O of planning a file.  The type is sniffed from the
first bytes (``sources.sniff``), never taken from the name; an image's pixel count comes
from its header (Pillow), for FLORA's 150-megapixel limit.
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from pathlib import Path

from ..manifest.sources import MAX_PIXELS, FileFacts, sniff


class FileProbe:
    """``sources.Probe`` on the file system: resolve, stat, hash and sniff each file once.

    A relative path is taken from ``base`` (the manifest's folder); ``~`` is expanded.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self._seen: dict[str, FileFacts | str] = {}

    def __call__(self, raw: str) -> FileFacts | str:
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = self.base / path
        where = os.path.abspath(path)
        if where not in self._seen:
            self._seen[where] = probe_file(Path(where))
        return self._seen[where]


def probe_file(path: Path) -> FileFacts | str:
    """Hash, size and sniffed type of one file, or why it cannot be read."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return f"is not a file ({path})"
        digest, head = hash_file(path)
    except FileNotFoundError:
        return f"file not found ({path})"
    except OSError as exc:
        return f"cannot read the file ({path}): {exc.strerror or exc}"
    kind = sniff(head)
    pixels = image_pixels(path) if kind and kind.startswith("image/") else None
    return FileFacts(str(path), digest, info.st_size, kind, pixels)


def hash_file(path: Path) -> tuple[str, bytes]:
    """``(sha256 hex, first 64 bytes)`` of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    head = b""
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            head = head or chunk[:64]
            digest.update(chunk)
    return digest.hexdigest(), head


def image_pixels(path: Path) -> int | None:
    """Width × height from an image's header (Pillow), or None if Pillow cannot read it."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Image.DecompressionBombError:  # above ~179 megapixels: over FLORA's limit too
            return MAX_PIXELS + 1
        except Exception:  # Pillow raises many kinds for files it cannot read
            return None
    return int(width) * int(height)

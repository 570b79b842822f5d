"""Results locations that many workers share: one folder, or an object store prefix.

``open_results(location, worker=...)`` gives what ``flora-batch worker`` writes through:

* a folder that every machine reaches at the same path (NFS, SMB...): ``SharedFolder``,
  the local ``Results`` with one temporary folder per worker (``.flora-tmp/<worker>``),
  so a worker that starts never sweeps away the downloads of one that is running;
* ``s3://bucket/prefix``: ``ObjectResults``.  A download still goes to a local temporary
  file and is hashed there while it streams; ``commit`` then sends it with one PUT, which
  an object store applies whole or not at all, so a partial object never carries a final
  name.  The ledger records the object's URL, size and sha256, as it records a path.

fsspec and s3fs are imported only for ``s3://`` locations (``pip install flora-batch[s3]``);
credentials come from the usual AWS variables, ``storage_options`` go to fsspec (e.g.
``{"client_kwargs": {"endpoint_url": ...}}`` for an S3-compatible server).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ResultsError
from .local import TMP_DIR, FileSink, Results, SavedFile

#: A worker's leftover ``.part`` file untouched for this long belongs to a dead worker.
STALE_SECONDS = 3600.0


def is_object_url(location: str) -> bool:
    """Whether a results location names an object store rather than a folder."""
    return location.startswith("s3://")


def open_results(
    location: str, *, worker: str, storage_options: dict[str, Any] | None = None
) -> SharedFolder | ObjectResults:
    """The results location of a submitted batch, as ``worker`` writes to it."""
    if is_object_url(location):
        return ObjectResults(location, storage_options=storage_options)
    return SharedFolder(Path(location), worker=worker)


class SharedFolder(Results):
    """A results folder shared by workers: each downloads into its own temporary folder."""

    def __init__(self, root: Path, *, worker: str) -> None:
        super().__init__(root)
        self.scratch = root / TMP_DIR / re.sub(r"[^A-Za-z0-9._-]", "_", worker)

    def prepare(self) -> None:
        """Create the folder and this worker's temporary folder (no other worker's is touched)."""
        super().prepare()
        if self.scratch.is_symlink():
            raise ResultsError(f"{self.scratch} is a symlink: remove it and run again")
        try:
            self.scratch.mkdir(exist_ok=True)
        except OSError as exc:
            raise ResultsError(f"cannot create {self.scratch}: {exc.strerror or exc}") from exc
        self._sweep_stale()

    def sweep_temporary(self) -> int:
        """Remove this worker's leftovers only."""
        removed = 0
        if self.scratch.is_dir() and not self.scratch.is_symlink():
            for leftover in self.scratch.glob("*.part"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
                    removed += 1
        return removed

    def _sweep_stale(self) -> None:
        """Leftovers of workers that died long ago: ``.part`` files unwritten for an hour.

        Folders stay: an empty one may belong to a live worker that has not downloaded yet.
        """
        cutoff = time.time() - STALE_SECONDS
        for folder in (self.root / TMP_DIR).iterdir():
            if folder == self.scratch or folder.is_symlink() or not folder.is_dir():
                continue
            for part in folder.glob("*.part"):
                with contextlib.suppress(OSError):
                    if part.stat().st_mtime < cutoff:
                        part.unlink()

    def temp_path(self) -> Path:
        """A fresh temporary file in this worker's temporary folder."""
        return self.scratch / f"{secrets.token_hex(8)}.part"


class ObjectResults:
    """Outputs under an object store prefix; files are hashed locally, then PUT whole."""

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None) -> None:
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - an install without the extra
            raise ResultsError(f"{url}: object store results need flora-batch[s3]") from exc
        self.root = url.rstrip("/")
        try:
            self.fs, self._base = fsspec.core.url_to_fs(self.root, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise ResultsError(f"cannot use {url}: {exc}") from exc
        self._tmp = Path(tempfile.mkdtemp(prefix="flora-batch-"))

    def prepare(self) -> None:
        """Check that the bucket can be reached; a missing one is a clear error."""
        bucket = self._base.split("/", 1)[0]
        try:
            found = self.fs.exists(bucket)
        except Exception as exc:  # botocore and aiohttp errors share no base class
            raise ResultsError(f"cannot reach {self.root}: {exc}") from exc
        if not found:
            raise ResultsError(f"the bucket of {self.root} does not exist (or is not yours)")

    def close(self) -> None:
        """Remove the local temporary folder."""
        shutil.rmtree(self._tmp, ignore_errors=True)

    def target(self, relative: str) -> str:
        """The object URL for a relative output name, refusing names that climb out."""
        rel = PurePosixPath(relative)
        if not rel.parts or rel.is_absolute() or any(p in (".", "..") for p in rel.parts):
            raise ResultsError(f"output name {relative!r} would write outside {self.root}")
        return f"{self.root}/{rel}"

    def name_of(self, path: str) -> str | None:
        """The output name of an object ``commit`` put here (None: it lies elsewhere)."""
        prefix = self.root + "/"
        return path[len(prefix) :] if path.startswith(prefix) else None

    def temp_path(self) -> Path:
        """A fresh local temporary file (a download is hashed here before its PUT)."""
        return self._tmp / f"{secrets.token_hex(8)}.part"

    def temp_file(self) -> FileSink:
        """A fresh local temporary file for a download to stream into."""
        return FileSink(self.temp_path())

    def commit(self, tmp: Path, relative: str, *, synced: bool = False) -> str:
        """PUT ``tmp`` as one object under its final name, then drop ``tmp`` (``synced``
        does not matter: the object store keeps what it acknowledged)."""
        try:
            final = self.target(relative)
            self.fs.put_file(str(tmp), final)
        except ResultsError:
            raise
        except Exception as exc:  # botocore and aiohttp errors share no base class
            raise ResultsError(f"cannot write {self.root}/{relative}: {exc}") from exc
        finally:
            self.discard(tmp)
        return final

    def write_text(self, text: str, relative: str) -> SavedFile:
        """A text output, PUT like any other."""
        data = text.encode("utf-8")
        tmp = self.temp_path()
        tmp.write_bytes(data)
        final = self.commit(tmp, relative)
        return SavedFile(final, len(data), hashlib.sha256(data).hexdigest(), "text/plain")

    def discard(self, tmp: Path) -> None:
        """Forget a local temporary file."""
        with contextlib.suppress(OSError):
            tmp.unlink()

    def verify(self, path: str | None, size: int | None, sha256: str | None, *, deep: bool) -> bool:
        """Whether the object is there with the recorded size (and, ``deep``, hash)."""
        if not path or size is None or not sha256 or not path.startswith(self.root + "/"):
            return False
        try:
            if int(self.fs.info(path)["size"]) != size:
                return False
            return not deep or hashlib.sha256(self.fs.cat_file(path)).hexdigest() == sha256
        except Exception:  # missing, or unreadable: the caller fetches it again
            return False

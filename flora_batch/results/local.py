"""The results folder: where outputs land, atomically, and how we check them later.

Every output is written to a temporary file inside ``<root>/.flora-tmp/`` (same file
system, so the final rename is atomic), fsynced, then renamed into place.  A partial
file therefore never carries a final name.  Paths come from ``naming`` (sanitised,
relative) and are checked once more here: a name must stay below the root, outside
``.flora-tmp``, and no folder on its way may be a symlink, so a link planted in the
results folder can neither redirect a write elsewhere nor onto another job's file.
A symlinked ``.flora-tmp`` is refused, and the sweep removes only ``*.part`` files.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from ..errors import ResultsError

TMP_DIR = ".flora-tmp"


@dataclass(frozen=True, slots=True)
class SavedFile:
    """A file that is in place and whose bytes we hashed."""

    path: Path | str  # a local path, or an object's URL (``object_results``)
    size: int
    sha256: str
    content_type: str | None


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Results:
    """One results folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._resolved: str | None = None  # the root, resolved once (``target``)
        self._folders: set[str] = set()  # folders made by ``commit`` in this run
        # Temporary names: this object's random prefix and a counter (one random draw).
        self._tmp_prefix = f"{self.root / TMP_DIR}{os.sep}{secrets.token_hex(6)}-"
        self._tmp_count = itertools.count()

    def prepare(self) -> None:
        """Create the folder (and its temp area) or say clearly why it cannot be used."""
        tmp = self.root / TMP_DIR
        if tmp.is_symlink() or (tmp.exists() and not tmp.is_dir()):
            raise ResultsError(
                f"{tmp} is a symlink or a file, not flora-batch's temporary folder: "
                "remove it and run again"
            )
        try:
            tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(
                f"cannot create the results folder {self.root}: {exc.strerror or exc}"
            ) from exc
        if not os.access(self.root, os.W_OK):
            raise ResultsError(f"the results folder {self.root} is not writable")
        self.sweep_temporary()

    def sweep_temporary(self) -> int:
        """Remove leftovers of downloads that a crash interrupted; they are never trusted."""
        tmp = self.root / TMP_DIR
        removed = 0
        if tmp.is_dir() and not tmp.is_symlink():
            for leftover in tmp.glob("*.part"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
                    removed += 1
        return removed

    def target(self, relative: str) -> Path:
        """The absolute path for a relative output name, refusing anything outside root.

        Raises:
            ResultsError: the name is absolute, has ``.``/``..`` parts, points into
                ``.flora-tmp``, or a folder on its way is a symlink.
        """
        root = self._resolved or str(self.root.resolve())
        self._resolved = root
        parts = PurePosixPath(relative).parts
        if not parts or parts[0] in ("/", TMP_DIR) or any(p in (".", "..") for p in parts):
            raise ResultsError(f"output name {relative!r} would write outside {self.root}")
        folder = root  # strings, not Paths: this runs for every file
        for part in parts[:-1]:
            folder = f"{folder}{os.sep}{part}"
            if os.path.islink(folder):
                raise ResultsError(
                    f"output name {relative!r} would write through the symlink {folder} "
                    f"(to {os.readlink(folder)}): flora-batch never writes through links "
                    "in the results folder; remove it and run again"
                )
        return Path(f"{folder}{os.sep}{parts[-1]}")

    def name_of(self, path: str) -> str | None:
        """The output name of a file ``commit`` put here (None: it lies elsewhere)."""
        root = self._resolved or str(self.root.resolve())
        self._resolved = root
        prefix = root + os.sep
        return path[len(prefix) :].replace(os.sep, "/") if path.startswith(prefix) else None

    def temp_path(self) -> Path:
        """A fresh temporary file name inside the results folder."""
        return Path(f"{self._tmp_prefix}{next(self._tmp_count)}.part")

    def temp_file(self) -> FileSink:
        """A fresh temporary file inside the results folder, for a download to stream into."""
        return FileSink(self.temp_path())

    def commit(self, tmp: Path, relative: str, *, synced: bool = False) -> Path:
        """fsync ``tmp`` (unless ``synced``: its writer did) and rename it to its final
        name (atomic on one file system)."""
        try:
            final = self.target(relative)
        except ResultsError:
            self.discard(tmp)
            raise
        try:
            if not synced:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            self._rename(tmp, final)
        except OSError as exc:
            raise ResultsError(f"cannot write {final}: {exc.strerror or exc}") from exc
        return final

    def _rename(self, tmp: Path, final: Path) -> None:
        """``os.replace``, making the folder first if this run has not made it yet.

        A link planted at the final name is replaced itself, never written through
        (rename(2) does not follow it).  A folder removed while the batch runs is made
        again: the rename fails, and is tried once more after the ``mkdir``.
        """
        folder = os.path.dirname(final)
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        try:
            os.replace(tmp, final)
        except FileNotFoundError:
            if not tmp.exists():
                raise
            os.makedirs(folder, exist_ok=True)
            os.replace(tmp, final)

    def write_text(self, text: str, relative: str) -> SavedFile:
        """A text output: written atomically like any other file."""
        data = text.encode("utf-8")
        tmp = self.temp_path()
        try:
            tmp.write_bytes(data)
        except OSError as exc:
            raise ResultsError(f"cannot write in {self.root}: {exc.strerror or exc}") from exc
        path = self.commit(tmp, relative)
        return SavedFile(path, len(data), hashlib.sha256(data).hexdigest(), "text/plain")

    def discard(self, tmp: Path) -> None:
        """Forget a temporary file that did not make it."""
        with contextlib.suppress(OSError):
            tmp.unlink()

    def verify(self, path: str | None, size: int | None, sha256: str | None, *, deep: bool) -> bool:
        """Whether a recorded output is still on disk as recorded (size, or size and hash)."""
        if not path or size is None or not sha256:
            return False
        try:  # one lstat: a resume checks every saved file of the batch (100k of them)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:  # a symlink is not ours
                return False
            return not deep or sha256_file(Path(path)) == sha256
        except OSError:
            return False

    def relative(self, path: Path) -> str:
        """A path relative to the results root, for display."""
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)


class FileSink:
    """A temporary file a download streams into (``FloraClient.download``'s ``Sink``).

    The results folder writes files, never the client: it opens, writes, syncs and closes
    this one; any failure of the disk is a ``ResultsError`` (the batch stops: exit 7).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO | None = None

    def write_all(self, data: bytes, *, fsync: bool) -> None:
        """A whole (small) body in one ``write`` loop, synced on the same descriptor."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._failed(exc) from exc

    def write(self, chunk: bytes) -> None:
        """The next piece of a streamed body (the file opened at the first)."""
        try:
            if self._fh is None:
                self._fh = open(self.path, "wb")  # closed by finish/abandon
            self._fh.write(chunk)
        except OSError as exc:
            raise self._failed(exc) from exc

    def finish(self, *, fsync: bool) -> None:
        """The streamed body is complete: flushed, synced (``fsync``), closed."""
        try:
            if self._fh is None:  # an empty body
                self._fh = open(self.path, "wb")
            self._fh.flush()
            if fsync:
                os.fsync(self._fh.fileno())
            self._fh.close()
        except OSError as exc:
            raise self._failed(exc) from exc
        finally:
            self._fh = None

    def abandon(self) -> None:
        """The body will not be kept: closed, unflushed (the caller discards the file)."""
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def _failed(self, exc: OSError) -> ResultsError:
        return ResultsError(f"cannot write {self.path}: {exc.strerror or exc}")


class ResultStore(Protocol):
    """What the worker needs of a results location: this folder, or ``object_results``."""

    def temp_path(self) -> Path:
        """A fresh local temporary file to download into."""

    def temp_file(self) -> FileSink:
        """A fresh local temporary file, for a download to stream into."""

    def commit(self, tmp: Path, relative: str, *, synced: bool = False) -> Path | str:
        """Put a finished temporary file in place under its final name; where it went.

        ``synced``: the file's bytes are already durable (``FloraClient.download``'s
        ``fsync``), so they need not be synced again before the rename.
        """

    def write_text(self, text: str, relative: str) -> SavedFile:
        """Write a text output in place."""

    def discard(self, tmp: Path) -> None:
        """Forget a temporary file that did not make it."""

    def verify(self, path: str | None, size: int | None, sha256: str | None, *, deep: bool) -> bool:
        """Whether a recorded output is still there as recorded."""

    def name_of(self, path: str) -> str | None:
        """The output name a recorded ``path`` has here (what ``target`` was given), or
        None when it lies outside this location."""

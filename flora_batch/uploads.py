"""Input files as FLORA assets: each distinct file uploaded once, resumably (ASSETS.md).

``Uploader`` runs beside the worker (``pipeline.run_batch``): it uploads every file that
a job still to be submitted needs, four at a time, while the worker submits the jobs
whose inputs are ready; ``resolve_inputs`` is the worker's hook that swaps a job's
placeholders (``sources.py``) for the asset URLs right before its create.  A job whose
file is not ready yet waits, unpaid; one whose file failed is not submitted this run.

One ``uploads`` row per distinct file (``ledger/upload_store.py``)::

    planned ──begin──► uploading ──────────────► ready
                           │  (asset id noted the moment it is known)
                           └──► failed ──(next run: reopen as attempt n+1, a new key)──► planned

Paths (ASSETS.md §1): a file up to 4 MiB is one multipart create (``direct``); a larger
one is reserved (``signed_url``), sent to the storage host, completed (the row's ``step``
says how far it got); a web image is fetched by FLORA (``url``) and, if FLORA will not,
downloaded here and uploaded as a file, keyed by its content.  Every asset is polled until
``ready``.  A ``ready`` row whose asset a job still needs is checked with one
``GET /assets/{id}`` per run, and uploaded again if FLORA has lost it; job keys do not
change, since they hash the placeholder, not the URL.

Never two assets for one file:

* the create's ``Idempotency-Key`` (``sources.upload_idempotency_key``: the file's hash
  and the workspace) is committed by ``begin_upload`` before the request leaves, and a
  lost answer (dropped connection, timeout, 5xx, broken JSON) is resent with that key,
  in this run or the next (a key older than FLORA's two-hour window is looked up first);
* a 409 ``idempotency_duplicate`` names no asset (ASSETS.md §9), so the asset is found in
  ``GET /assets`` (newest first) by its file name, which carries a hash tag, its size and
  a creation time in the window of this key's sends; if it is not listed, the file waits
  for the next run: it is never created again under a new key;
* only a definite answer (a 4xx refusal, a ``failed`` asset) marks a row ``failed``; a row
  whose create may have landed stays ``uploading`` with its key.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import stat
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from . import retrying
from .asset_wire import SIGNED_URL, AssetInfo, create_body, form_fields
from .client import FloraClient
from .config import Settings
from .errors import (
    AuthError,
    FloraError,
    IdempotencyDuplicate,
    InsufficientCredits,
    InvalidInput,
    LedgerError,
    NotFound,
    StorageError,
    TransportError,
    UploadError,
)
from .ledger import Ledger
from .sources import (
    DIRECT_UPLOAD_LIMIT,
    FILE_PREFIX,
    IMAGE_TYPES,
    MAX_PIXELS,
    VIDEO_TYPES,
    FileFacts,
    UploadSource,
    is_placeholder,
    sniff,
    upload_idempotency_key,
    upload_key,
    upload_keys,
    upload_name,
)
from .types import JobRecord, JobState, RunInput, UploadRecord, UploadState

log = logging.getLogger("flora_batch.uploads")

Clock = Callable[[], float]

#: Files uploaded at once.
UPLOAD_CONCURRENCY = 4
#: Longest pause between two polls of a pending asset, in seconds.
POLL_MAX = 5.0
#: Seconds of clock difference tolerated when matching a listed asset to our sends.
RECONCILE_SLACK = 120.0
_CREATE_TRIES = 6
_TRANSFER_TRIES = 3
_TAG_RE = re.compile(r"\.([0-9a-f]{12})(?:\.|$)")


# --- reading local files (plan time) ------------------------------------------------------


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


# --- the upload stage -------------------------------------------------------------------------


@dataclass
class UploadReport:
    """What the upload stage did in one run, for the summary."""

    files: int = 0  # distinct files the run's unsent jobs need
    already: int = 0  # of those, already ready in FLORA
    uploaded: int = 0  # made ready by this run
    bytes_sent: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # source -> why not ready


class Uploader:
    """Uploads a batch's input files and resolves job inputs to their asset URLs.

    Args:
        sources: every file the batch's jobs use, by upload key (``sources.UploadSource``).
        workspace_id: the workspace assets are made in (``ws_...``).
        folder: the workspace library folder to put them in, if any.
    """

    def __init__(
        self,
        ledger: Ledger,
        client: FloraClient,
        sources: Mapping[str, UploadSource],
        *,
        workspace_id: str,
        folder: str | None,
        settings: Settings,
        clock: Clock = time.time,
        concurrency: int = UPLOAD_CONCURRENCY,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.sources = dict(sources)
        self.workspace_id = workspace_id
        self.folder = folder
        self.settings = settings
        self.clock = clock
        self.concurrency = max(1, concurrency)
        self.ready: dict[str, str] = {}  # upload key -> asset URL, ready in this run
        self.why: dict[str, str] = {}  # upload key -> why it is not ready in this run
        self.needed: list[str] = []
        self.finished = False
        self.fatal: FloraError | None = None
        self.report = UploadReport()
        self._paths: dict[str, Path] = {}  # bytes of a download, by content key
        self._locks: dict[str, asyncio.Lock] = {}

    def record(self, now: float) -> int:
        """Write every source as ``planned``; rows already in the ledger stay as they are."""
        rows = [s.planned(self.workspace_id, now) for s in self.sources.values()]
        return self.ledger.record_uploads(rows)

    def plan(self, jobs: Iterable[JobRecord]) -> list[str]:
        """The upload keys that jobs not yet sent (planned, or submitting again) need."""
        keys: dict[str, None] = {}
        for rec in jobs:
            if rec.state in (JobState.PLANNED, JobState.SUBMITTING):
                keys.update(dict.fromkeys(k for k in upload_keys(rec.inputs) if k in self.sources))
        self.needed = list(keys)
        self.report.files = len(self.needed)
        return self.needed

    async def run(self, stop: asyncio.Event | None = None) -> UploadReport:
        """Upload every needed file (``plan`` first), ``concurrency`` at a time."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(key: str) -> None:
            async with gate:
                if self.fatal is not None or (stop is not None and stop.is_set()):
                    self._not_ready(key, "the run stopped before it was uploaded")
                    return
                await self._one(key)

        try:
            await asyncio.gather(*(one(k) for k in self.needed))
        finally:
            self.finished = True
        return self.report

    def counts(self) -> tuple[int, int, int]:
        """``(ready, not ready, total)`` over the files this run needs, for progress."""
        ready = sum(1 for k in self.needed if k in self.ready)
        return ready, sum(1 for k in self.needed if k in self.why), len(self.needed)

    # -- the worker's hook ---------------------------------------------------------------

    def resolve_inputs(self, rec: JobRecord) -> tuple[RunInput, ...] | None:
        """The job's inputs with asset URLs for placeholders; None while one is uploading.

        Raises:
            UploadError: an input's file was not uploaded in this run (the job waits for
                the next run, unpaid).
        """
        out: list[RunInput] = []
        for item in rec.inputs:
            if not is_placeholder(item.value):
                out.append(item)
                continue
            key = upload_key(item.value)
            url = self.ready.get(key)
            if url is None:
                if key in self.why or self.finished:
                    why = self.why.get(key, "it was not uploaded in this run")
                    raise UploadError(f"input {item.id!r} ({self._shown(key)}): {why}")
                return None
            out.append(RunInput(id=item.id, type=item.type, value=url))
        return tuple(out)

    def _shown(self, key: str) -> str:
        source = self.sources.get(key)
        return source.source if source else key

    # -- one file ----------------------------------------------------------------------

    async def _one(self, key: str) -> None:
        try:
            before = self.ledger.upload(key)
            self.ready[key] = url = await self._drive(key)
        except (AuthError, InsufficientCredits, LedgerError) as exc:
            self.fatal = self.fatal or exc
            self._not_ready(key, str(exc))
        except FloraError as exc:
            self._not_ready(key, str(exc))
        else:
            if before.state is UploadState.READY and before.url == url:
                self.report.already += 1
            else:
                self.report.uploaded += 1

    def _not_ready(self, key: str, why: str) -> None:
        self.why[key] = why
        self.report.failed[self._shown(key)] = why
        log.warning("not uploaded: %s: %s", self._shown(key), why)

    async def _drive(self, key: str) -> str:
        """Take one file from whatever state the ledger has it in to ``ready``; its URL."""
        async with self._locks.setdefault(key, asyncio.Lock()):
            rec = self._current(key)
            if rec.state is UploadState.READY and rec.url:
                if await self._still_ready(rec):
                    return rec.url
                rec = self._reopen(rec, f"asset {rec.asset_id} is gone from FLORA")
            if rec.state is UploadState.PLANNED:
                rec = self.ledger.begin_upload(key, via=self._path(key), now=self.clock())
            flows = {"url": self._fetched, "direct": self._direct, "signed_url": self._signed}
            rec, info = await flows[rec.via or self._path(key)](rec, self.sources[key])
            return self._ready(rec, info)

    def _current(self, key: str) -> UploadRecord:
        rec = self.ledger.upload(key)
        if rec.workspace_id != self.workspace_id:
            return self._reopen(rec, f"uploading into workspace {self.workspace_id} now")
        if rec.state is UploadState.FAILED:
            return self._reopen(rec, rec.error or "it failed before")
        return rec

    def _reopen(self, rec: UploadRecord, reason: str) -> UploadRecord:
        key = upload_idempotency_key(rec.sha256, self.workspace_id, rec.attempt + 1)
        return self.ledger.reopen_upload(
            rec.sha256,
            workspace_id=self.workspace_id,
            idempotency_key=key,
            reason=reason,
            now=self.clock(),
        )

    def _path(self, key: str) -> str:
        source = self.sources[key]
        if source.kind == "url":
            return "url"
        return "direct" if (source.size or 0) <= DIRECT_UPLOAD_LIMIT else "signed_url"

    def _ready(self, rec: UploadRecord, info: AssetInfo) -> str:
        url = info.url or rec.url
        if not url:
            raise UploadError(f"FLORA said asset {info.asset_id} is ready but gave no URL")
        self.ledger.mark_upload_ready(
            rec.sha256,
            asset_id=info.asset_id,
            url=url,
            size=info.size,
            content_type=info.content_type,
            now=self.clock(),
            replaces=rec.asset_id,
        )
        log.info("uploaded %s as %s", self._shown(rec.sha256), info.asset_id)
        return url

    def _failed(self, rec: UploadRecord, why: str) -> NoReturn:
        """A definite failure: the row is ``failed``; the next run tries with a new key."""
        self.ledger.mark_upload_failed(rec.sha256, error=why, now=self.clock())
        raise UploadError(why)

    # -- path B: FLORA fetches a web image -------------------------------------------------

    async def _fetched(
        self, rec: UploadRecord, src: UploadSource
    ) -> tuple[UploadRecord, AssetInfo]:
        if rec.asset_id is None:
            body = create_body(
                src.source,
                self.workspace_id,
                file_name=rec.file_name,
                content_type=src.content_type,
                folder=self.folder,
            )
            try:
                info = await self._create(
                    rec, lambda: self.client.create_asset(body, rec.idempotency_key)
                )
            except InvalidInput as exc:
                return await self._fallback(rec, src, f"FLORA would not fetch it ({exc})")
            rec = self._noted(rec, info, None)
        else:
            info = await self._get(rec)
        info = await self._poll(rec, info)
        if info.status != "ready":
            return await self._fallback(
                rec, src, info.failure_message or "FLORA could not fetch it"
            )
        return rec, info

    async def _fallback(
        self, rec: UploadRecord, src: UploadSource, why: str
    ) -> tuple[UploadRecord, AssetInfo]:
        """Download a web image FLORA would not fetch and upload its bytes, keyed by content."""
        log.info("%s: %s; downloading it to upload the bytes", src.source, why)
        with tempfile.TemporaryDirectory(prefix="flora-upload-") as folder:
            path = Path(folder) / "download"
            try:
                got = await retrying.call(
                    lambda: self.client.download(
                        src.source, path, max_bytes=self.settings.max_download_bytes
                    ),
                    what=f"download {src.source}",
                )
            except FloraError as exc:
                self._failed(rec, f"{why}, and downloading it failed: {exc}")
            with path.open("rb") as fh:
                kind = sniff(fh.read(64))
            if kind not in (*IMAGE_TYPES, *VIDEO_TYPES):
                self._failed(rec, f"{why}; the download is {kind or 'not an image or video'}")
            inner = self._downloaded(src, got.sha256, got.size, kind, path)
            await self._drive(inner.sha256)
        done = self.ledger.upload(inner.sha256)
        assert done.asset_id is not None
        info = AssetInfo(done.asset_id, "ready", done.url, size=done.size, content_type=kind)
        return rec, info

    def _downloaded(
        self, src: UploadSource, digest: str, size: int, kind: str | None, path: Path
    ) -> UploadSource:
        name = upload_name(src.file_name.split(".")[0], digest, kind)
        inner = UploadSource(digest, FILE_PREFIX + digest, "file", src.source, name, size, kind)
        self.sources.setdefault(digest, inner)
        self._paths[digest] = path
        self.ledger.record_uploads([inner.planned(self.workspace_id, self.clock())])
        return self.sources[digest]

    # -- path A: direct bytes ----------------------------------------------------------------

    async def _direct(self, rec: UploadRecord, src: UploadSource) -> tuple[UploadRecord, AssetInfo]:
        if rec.asset_id is None:
            data = self._bytes(rec, src)
            fields = form_fields(
                self.workspace_id,
                file_name=rec.file_name,
                content_type=src.content_type,
                folder=self.folder,
            )
            key = rec.idempotency_key
            try:
                info = await self._create(
                    rec, lambda: self.client.upload_asset(fields, data, src.content_type, key)
                )
            except InvalidInput as exc:
                self._failed(rec, f"FLORA refused the file: {exc}")
            self.report.bytes_sent += len(data)
            rec = self._noted(rec, info, None)
        else:
            info = await self._get(rec)
        info = await self._poll(rec, info)
        if info.status != "ready":
            self._failed(rec, f"FLORA could not keep the file: {info.failure_message}")
        return rec, info

    def _file(self, rec: UploadRecord, src: UploadSource) -> Path:
        return self._paths.get(rec.sha256) or Path(src.source)

    def _bytes(self, rec: UploadRecord, src: UploadSource) -> bytes:
        """The file's bytes, checked against the hash the job keys were made from."""
        path = self._file(rec, src)
        try:
            data = path.read_bytes()
        except OSError as exc:
            self._failed(rec, f"cannot read {path}: {exc.strerror or exc}")
        if hashlib.sha256(data).hexdigest() != rec.sha256:
            self._failed(rec, f"{path} changed after the batch was planned: run it again")
        return data

    # -- path C: signed upload ----------------------------------------------------------------

    async def _signed(self, rec: UploadRecord, src: UploadSource) -> tuple[UploadRecord, AssetInfo]:
        path = self._file(rec, src)
        try:
            digest, _ = hash_file(path)
        except OSError as exc:
            self._failed(rec, f"cannot read {path}: {exc.strerror or exc}")
        if digest != rec.sha256:
            self._failed(rec, f"{path} changed after the batch was planned: run it again")
        info = await self._reserved(rec, src)
        renewed = False
        for _ in range(6):  # transfer -> complete -> poll; one fresh reservation if it fails
            rec = self.ledger.upload(rec.sha256)
            if rec.step == "reserved":
                info = await self._transfer(rec, info, path, src)
                rec = self.ledger.set_upload_step(rec.sha256, "transferred", now=self.clock())
            if rec.step == "transferred":
                info = await self._complete(rec)
                continue
            info = await self._poll(rec, info)
            if info.status == "ready":
                return rec, info
            if renewed:
                break
            renewed = True
            info = await self._reserve(rec)
        self._failed(rec, f"FLORA could not keep the file: {info.failure_message}")

    async def _reserved(self, rec: UploadRecord, src: UploadSource) -> AssetInfo:
        """Create the signed upload, or on a resume get a fresh reservation (or the asset)."""
        if rec.asset_id is not None:
            return await (self._reserve(rec) if rec.step in (None, "reserved") else self._get(rec))
        body = create_body(
            SIGNED_URL,
            self.workspace_id,
            file_name=rec.file_name,
            content_type=src.content_type,
            folder=self.folder,
        )
        try:
            info = await self._create(
                rec, lambda: self.client.create_asset(body, rec.idempotency_key)
            )
        except InvalidInput as exc:
            self._failed(rec, f"FLORA refused the upload: {exc}")
        rec = self._noted(rec, info, "reserved")
        if info.upload is None and info.upload_problem is None and info.status != "ready":
            return await self._reserve(rec)  # found by reconciliation: no instructions with it
        return info

    async def _reserve(self, rec: UploadRecord) -> AssetInfo:
        """``/retry``: fresh instructions; a 409 means the upload was completed already."""
        asset_id = rec.asset_id or ""
        try:
            info = await retrying.call(
                lambda: self.client.retry_asset(asset_id), what=f"retry asset {asset_id}"
            )
        except (IdempotencyDuplicate, InvalidInput):
            self.ledger.set_upload_step(rec.sha256, "completed", now=self.clock())
            return await self._get(rec)
        self.ledger.set_upload_step(rec.sha256, "reserved", now=self.clock())
        return info

    async def _transfer(
        self, rec: UploadRecord, info: AssetInfo, path: Path, src: UploadSource
    ) -> AssetInfo:
        """Send the bytes to the storage host; 5xx and drops are retried, a refusal renewed once."""
        renewed = False
        last: FloraError | None = None
        for attempt in range(1, _TRANSFER_TRIES + 1):
            if info.upload is None:
                self._failed(rec, info.upload_problem or "FLORA gave no upload instructions")
            try:
                await self.client.send_to_storage(
                    info.upload, path, rec.file_name, src.content_type
                )
            except StorageError as exc:
                last = exc
                if exc.status < 500:
                    if renewed:
                        self._failed(rec, f"the storage host refused the file: {exc}")
                    renewed = True
                    info = await self._reserve(rec)
                    continue
            except TransportError as exc:
                last = exc
            else:
                self.report.bytes_sent += src.size or 0
                return info
            await asyncio.sleep(retrying.backoff(attempt, retrying.DEFAULT_POLICY, last))
        raise UploadError(f"sending the file to the storage host kept failing: {last}")

    async def _complete(self, rec: UploadRecord) -> AssetInfo:
        """``/complete``; a 409 (completed before, or no bytes arrived) is settled by ``/retry``."""
        asset_id = rec.asset_id or ""
        try:
            info = await retrying.call(
                lambda: self.client.complete_asset(asset_id), what=f"complete asset {asset_id}"
            )
        except IdempotencyDuplicate:
            return await self._reserve(rec)
        self.ledger.set_upload_step(rec.sha256, "completed", now=self.clock())
        return info

    # -- the create, and finding an asset whose create answer was lost -----------------------

    async def _create(
        self, rec: UploadRecord, send: Callable[[], Awaitable[AssetInfo]]
    ) -> AssetInfo:
        """Send a create with the row's key, resending it (same key) while the answer is lost."""
        sent = rec.sent_at
        if sent is not None and self.clock() - sent > self.settings.key_window * 0.95:
            found = await self._find(rec)  # FLORA forgot the key: look before creating again
            if found is not None:
                return found
        for attempt in range(1, _CREATE_TRIES + 1):
            try:
                return await send()
            except IdempotencyDuplicate as exc:
                found = await self._find(rec)
                if found is None:
                    raise UploadError(
                        f"FLORA says this file's asset exists ({exc.code or 409}) but does not "
                        "list it yet; the next run looks again (it is never created twice)"
                    ) from exc
                return found
            except FloraError as exc:
                if not exc.retryable or attempt == _CREATE_TRIES:
                    raise
                await asyncio.sleep(retrying.backoff(attempt, retrying.DEFAULT_POLICY, exc))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _find(self, rec: UploadRecord) -> AssetInfo | None:
        """The asset a lost create made: same name and size, created while its key was sent."""
        tag = _TAG_RE.search(rec.file_name)
        items = await retrying.call(
            lambda: self.client.list_assets(self.workspace_id, query=tag[1] if tag else None),
            what="list assets",
        )
        now = self.clock()
        low = (rec.sent_at or now) - RECONCILE_SLACK
        hits = [
            a
            for a in items
            if a.name == rec.file_name
            and (a.size is None or rec.size is None or a.size == rec.size)
            and (a.created_at is None or low <= a.created_at <= now + RECONCILE_SLACK)
        ]
        if len(hits) > 1:
            ids = ", ".join(a.asset_id for a in hits)
            log.warning("%d assets match %s (%s); using the newest", len(hits), rec.file_name, ids)
        if hits:
            log.info("found the asset of %s by listing: %s", rec.file_name, hits[0].asset_id)
        return hits[0] if hits else None

    def _noted(self, rec: UploadRecord, info: AssetInfo, step: str | None) -> UploadRecord:
        return self.ledger.note_asset(
            rec.sha256, info.asset_id, url=info.url, step=step, now=self.clock()
        )

    # -- reading an asset ------------------------------------------------------------------------

    async def _get(self, rec: UploadRecord) -> AssetInfo:
        asset_id = rec.asset_id or ""
        try:
            return await retrying.call(
                lambda: self.client.get_asset(asset_id), what=f"get asset {asset_id}"
            )
        except NotFound:
            self._failed(rec, f"asset {asset_id} is gone from FLORA")

    async def _still_ready(self, rec: UploadRecord) -> bool:
        """Whether a recorded asset is still there and ready (one GET; unsure means yes)."""
        asset_id = rec.asset_id or ""
        try:
            info = await retrying.call(
                lambda: self.client.get_asset(asset_id), what=f"check asset {asset_id}"
            )
        except NotFound:
            return False
        except AuthError:
            raise
        except FloraError:
            return True
        return info.status == "ready"

    async def _poll(self, rec: UploadRecord, info: AssetInfo) -> AssetInfo:
        """GET the asset until ``ready`` or ``failed``, bounded by ``upload_timeout``."""
        deadline = self.clock() + self.settings.upload_timeout
        delay = max(0.05, min(self.settings.min_poll, 1.0))
        while info.status not in ("ready", "failed"):
            if self.clock() > deadline:
                raise UploadError(
                    f"asset {info.asset_id} is still {info.status} after "
                    f"{self.settings.upload_timeout:.0f}s; run again to keep waiting"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)
            info = await self._get(rec)
        return info

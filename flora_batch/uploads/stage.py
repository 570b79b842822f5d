"""``Uploader``: the upload stage of one run, and the worker's ``resolve_inputs`` hook.

See the package docstring for the state machine and the never-twice rules; this module
drives one ``uploads`` row per file through them, along the file's path:

* ``direct`` (path A, up to 4 MiB): one multipart create, then poll;
* ``signed_url`` (path C): create a reservation, send the bytes to the storage host,
  ``/complete``, poll; the row's ``step`` (``reserved``, ``transferred``, ``completed``)
  says where a resume picks up; a storage refusal or a ``failed`` asset gets one fresh
  reservation (``/retry``, same asset);
* ``url`` (path B): FLORA fetches the web image; if it will not, the image is downloaded
  and uploaded as a file under its bytes' hash, and the URL's row points at that asset.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from .. import retrying
from ..asset_wire import SIGNED_URL, AssetInfo, create_body, form_fields
from ..config import Settings
from ..errors import (
    AuthError,
    FloraError,
    InsufficientCredits,
    InvalidInput,
    LedgerError,
    NotFound,
    StorageError,
    UploadError,
)
from ..ledger import Ledger
from ..manifest.sources import (
    DIRECT_UPLOAD_LIMIT,
    FILE_PREFIX,
    IMAGE_TYPES,
    VIDEO_TYPES,
    UploadSource,
    is_placeholder,
    sniff,
    upload_idempotency_key,
    upload_key,
    upload_keys,
    upload_name,
)
from ..remote.client import FloraClient
from ..results.local import FileSink
from ..types import JobRecord, JobState, RunInput, UploadRecord, UploadState
from .calls import AssetCalls
from .probe import hash_file

log = logging.getLogger("flora_batch.uploads")

Clock = Callable[[], float]

#: Files uploaded at once.
UPLOAD_CONCURRENCY = 4


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
        self.calls = AssetCalls(client, settings, workspace_id, clock)
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

    # -- the worker's hook -------------------------------------------------------------

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

    # -- one file ------------------------------------------------------------------------

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
                if await self.calls.still_ready(rec.asset_id or ""):
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

    def _noted(self, rec: UploadRecord, info: AssetInfo, step: str | None) -> UploadRecord:
        return self.ledger.note_asset(
            rec.sha256, info.asset_id, url=info.url, step=step, now=self.clock()
        )

    def _step(self, rec: UploadRecord, step: str) -> UploadRecord:
        return self.ledger.set_upload_step(rec.sha256, step, now=self.clock())

    async def _get(self, rec: UploadRecord) -> AssetInfo:
        try:
            return await self.calls.get(rec.asset_id or "")
        except NotFound:
            self._failed(rec, f"asset {rec.asset_id} is gone from FLORA")

    async def _poll(self, rec: UploadRecord, info: AssetInfo) -> AssetInfo:
        try:
            return await self.calls.poll(info)
        except NotFound:
            self._failed(rec, f"asset {info.asset_id} is gone from FLORA")

    def _create_body(self, source: str, rec: UploadRecord, src: UploadSource) -> dict[str, str]:
        return create_body(
            source,
            self.workspace_id,
            file_name=rec.file_name,
            content_type=src.content_type,
            folder=self.folder,
        )

    # -- path B: FLORA fetches a web image -------------------------------------------------

    async def _fetched(
        self, rec: UploadRecord, src: UploadSource
    ) -> tuple[UploadRecord, AssetInfo]:
        if rec.asset_id is None:
            body = self._create_body(src.source, rec, src)
            key = rec.idempotency_key
            try:
                info = await self.calls.create(rec, lambda: self.client.create_asset(body, key))
            except InvalidInput as exc:
                return await self._fallback(rec, src, f"FLORA would not fetch it ({exc})")
            rec = self._noted(rec, info, None)
        else:
            info = await self._get(rec)
        info = await self._poll(rec, info)
        if info.status != "ready":
            why = info.failure_message or "FLORA could not fetch it"
            return await self._fallback(rec, src, why)
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
                        src.source, FileSink(path), max_bytes=self.settings.max_download_bytes
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
            key, kind = rec.idempotency_key, src.content_type
            try:
                info = await self.calls.create(
                    rec, lambda: self.client.upload_asset(fields, data, kind, key)
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
                rec = self._step(rec, "transferred")
            if rec.step == "transferred":
                done = await self.calls.complete(rec.asset_id or "")
                info = await (self._renew(rec) if done is None else self._completed(rec, done))
                continue
            info = await self._poll(rec, info)
            if info.status == "ready":
                return rec, info
            if renewed:
                break
            renewed = True
            info = await self._renew(rec)
        self._failed(rec, f"FLORA could not keep the file: {info.failure_message}")

    async def _completed(self, rec: UploadRecord, info: AssetInfo) -> AssetInfo:
        self._step(rec, "completed")
        return info

    async def _reserved(self, rec: UploadRecord, src: UploadSource) -> AssetInfo:
        """Create the signed upload, or on a resume get a fresh reservation (or the asset)."""
        if rec.asset_id is not None:
            return await (self._renew(rec) if rec.step in (None, "reserved") else self._get(rec))
        body = self._create_body(SIGNED_URL, rec, src)
        key = rec.idempotency_key
        try:
            info = await self.calls.create(rec, lambda: self.client.create_asset(body, key))
        except InvalidInput as exc:
            self._failed(rec, f"FLORA refused the upload: {exc}")
        rec = self._noted(rec, info, "reserved")
        if info.upload is None and info.upload_problem is None and info.status != "ready":
            return await self._renew(rec)  # found by listing: it came without instructions
        return info

    async def _renew(self, rec: UploadRecord) -> AssetInfo:
        """``/retry`` for fresh instructions; a 409 means the upload was completed already."""
        info = await self.calls.renew(rec.asset_id or "")
        if info is None:
            self._step(rec, "completed")
            return await self._get(rec)
        self._step(rec, "reserved")
        return info

    async def _transfer(
        self, rec: UploadRecord, info: AssetInfo, path: Path, src: UploadSource
    ) -> AssetInfo:
        """Send the bytes; a refusal by the storage host (expired policy...) is renewed once."""
        for renewal in range(2):
            if info.upload is None:
                self._failed(rec, info.upload_problem or "FLORA gave no upload instructions")
            try:
                await self.calls.send(info.upload, path, rec.file_name, src.content_type)
            except StorageError as exc:
                if renewal:
                    self._failed(rec, f"the storage host refused the file: {exc}")
                info = await self._renew(rec)
                if self.ledger.upload(rec.sha256).step == "completed":
                    return info  # it was completed after all: nothing left to send
                continue
            self.report.bytes_sent += src.size or 0
            return info
        raise AssertionError("unreachable")  # pragma: no cover

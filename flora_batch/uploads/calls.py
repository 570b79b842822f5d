"""FLORA's asset endpoints as the upload stage uses them: what may be repeated, and how.

* ``create`` resends a create with the row's own ``Idempotency-Key`` while its answer is
  lost (dropped connection, timeout, 5xx, broken JSON).  A 409 ``idempotency_duplicate``
  names no asset (ASSETS.md §9), so the asset is looked for with ``find``; so is one whose
  key is older than FLORA's window, before it is sent again.
* ``find`` lists ``GET /assets?query=<hash tag>`` (newest first) and keeps the assets with
  the row's file name (or its 12-digit hash tag), its size, and a creation time between
  the key's first send and now (± ``RECONCILE_SLACK``).
* ``renew`` (``/retry``) and ``complete`` answer None for a 409: the upload was completed
  already (or, for ``complete``, no bytes arrived: ``renew`` tells which).
* ``send`` posts the bytes to the storage host, retrying 5xx answers and dropped
  connections; a 4xx refusal is raised for the caller to renew the reservation once.
* ``poll`` reads the asset until ``ready`` or ``failed``, bounded by ``upload_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from .. import retrying
from ..asset_wire import AssetInfo, UploadTarget
from ..config import Settings
from ..errors import (
    AuthError,
    FloraError,
    IdempotencyDuplicate,
    InvalidInput,
    NotFound,
    StorageError,
    TransportError,
    UploadError,
)
from ..remote.client import FloraClient
from ..types import UploadRecord

log = logging.getLogger("flora_batch.uploads")

Clock = Callable[[], float]

#: Longest pause between two polls of a pending asset, in seconds.
POLL_MAX = 5.0
#: Seconds of clock difference tolerated when matching a listed asset to our sends.
RECONCILE_SLACK = 120.0
_CREATE_TRIES = 6
_SEND_TRIES = 3
_TAG_RE = re.compile(r"\.([0-9a-f]{12})(?:\.|$)")


class AssetCalls:
    """One workspace's asset requests, on one client."""

    def __init__(
        self, client: FloraClient, settings: Settings, workspace_id: str, clock: Clock
    ) -> None:
        self.client = client
        self.settings = settings
        self.workspace_id = workspace_id
        self.clock = clock

    async def create(
        self, rec: UploadRecord, send: Callable[[], Awaitable[AssetInfo]]
    ) -> AssetInfo:
        """Send a create with the row's key, resending it (same key) while the answer is lost.

        Raises:
            UploadError: FLORA says the asset exists (409) but does not list it yet.
            InvalidInput: FLORA refused the request (nothing was made).
        """
        sent = rec.sent_at
        if sent is not None and self.clock() - sent > self.settings.key_window * 0.95:
            found = await self.find(rec)  # FLORA forgot the key: look before creating again
            if found is not None:
                return found
        for attempt in range(1, _CREATE_TRIES + 1):
            try:
                return await send()
            except IdempotencyDuplicate as exc:
                found = await self.find(rec)
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

    async def find(self, rec: UploadRecord) -> AssetInfo | None:
        """The asset a lost create made: same name (or hash tag) and size, made while its key
        was being sent.  Several matches: the newest (the list is newest first)."""
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
            if (a.name == rec.file_name or (tag is not None and tag[1] in (a.name or "")))
            and (a.size is None or rec.size is None or a.size == rec.size)
            and (a.created_at is None or low <= a.created_at <= now + RECONCILE_SLACK)
        ]
        if len(hits) > 1:
            ids = ", ".join(a.asset_id for a in hits)
            log.warning("%d assets match %s (%s); using the newest", len(hits), rec.file_name, ids)
        if hits:
            log.info("found the asset of %s by listing: %s", rec.file_name, hits[0].asset_id)
        return hits[0] if hits else None

    async def get(self, asset_id: str) -> AssetInfo:
        """``GET /assets/{id}``, retried where safe.

        Raises:
            NotFound: FLORA does not have the asset (any more).
        """
        return await retrying.call(
            lambda: self.client.get_asset(asset_id), what=f"get asset {asset_id}"
        )

    async def still_ready(self, asset_id: str) -> bool:
        """Whether a recorded asset is still there and ready (one GET; unsure means yes)."""
        try:
            info = await self.get(asset_id)
        except NotFound:
            return False
        except AuthError:
            raise
        except FloraError:
            return True
        return info.status == "ready"

    async def poll(self, info: AssetInfo) -> AssetInfo:
        """GET the asset until ``ready`` or ``failed``, bounded by ``upload_timeout``.

        Raises:
            UploadError: still pending at the deadline (the next run keeps waiting).
            NotFound: the asset is gone.
        """
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
            info = await self.get(info.asset_id)
        return info

    async def renew(self, asset_id: str) -> AssetInfo | None:
        """``/retry``: a fresh signed reservation; None if the upload was completed (409)."""
        try:
            return await retrying.call(
                lambda: self.client.retry_asset(asset_id), what=f"retry asset {asset_id}"
            )
        except (IdempotencyDuplicate, InvalidInput):
            return None

    async def complete(self, asset_id: str) -> AssetInfo | None:
        """``/complete``; None for a 409 (completed before, or no bytes arrived)."""
        try:
            return await retrying.call(
                lambda: self.client.complete_asset(asset_id), what=f"complete asset {asset_id}"
            )
        except IdempotencyDuplicate:
            return None

    async def send(
        self, target: UploadTarget, path: Path, file_name: str, content_type: str | None
    ) -> None:
        """The bytes to the storage host; 5xx answers and dropped connections are retried.

        Raises:
            StorageError: the storage host refused the transfer (4xx).
            UploadError: it kept failing.
        """
        last: FloraError | None = None
        for attempt in range(1, _SEND_TRIES + 1):
            try:
                await self.client.send_to_storage(target, path, file_name, content_type)
                return
            except StorageError as exc:
                if exc.status < 500:
                    raise
                last = exc
            except TransportError as exc:
                last = exc
            await asyncio.sleep(retrying.backoff(attempt, retrying.DEFAULT_POLICY, last))
        raise UploadError(f"sending the file to the storage host kept failing: {last}")

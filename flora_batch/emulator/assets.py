"""Assets in memory (ASSETS.md): records, their lifecycle, reservations and idempotency keys.

Like a run, an asset's status is a pure function of the clock; nothing happens in the
background.  The statuses are the contract's three (ASSETS.md §6; there is no separate
``processing`` value):

* direct bytes (path A): ``ready`` at once;
* ``source`` URL (path B): ``pending_upload`` while the server "fetches" (``FETCH_SECONDS``
  ÷ ``speed``), then ``ready`` or ``failed`` (``fetch_refused``, or a type it cannot keep);
* signed upload (path C): ``pending_upload`` until the bytes are at the fake storage *and*
  ``complete`` was called, then ``INGEST_SECONDS`` ÷ ``speed`` more, then ``ready`` or
  ``failed`` (``ingest_failure``, empty or unsupported bytes, > 150 megapixels).  A
  reservation lapses at ``expires_at`` (``upload_ttl``); ``retry`` issues a fresh one.

Idempotency keys (``Idempotency-Key`` header) are scoped to operation + destination
(create: the workspace; complete and retry: the asset), forgotten after ``key_window``,
and bound only when the request succeeded.  A repeated key replays the asset's current
state or answers 409 ``idempotency_duplicate``, per ``config.asset_idempotency_mode``.

The store shares the emulator's lock, so a test thread can read ``records`` safely while
a uvicorn thread serves uploads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from . import uploads
from .asset_validation import AssetRequest, FilePart, stored_type
from .config import EmulatorConfig
from .faults import FaultDice, FaultKind
from .media import render_fetched
from .problems import ApiProblem

_SECRET = secrets.token_bytes(16)


def iso(seconds: float) -> str:
    """Clock seconds as an ISO-8601 UTC timestamp with milliseconds, ``…Z``."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(eq=False)
class AssetRecord:
    """One asset as the emulator keeps it; times are clock seconds.

    ``sha256``, ``size``, ``width`` and ``height`` describe the bytes once there are any;
    ``content_type`` is what they really are, ``upload_content_type`` what the client
    declared.  ``ready_at`` is when ingest ends (None: not started); ``failure`` makes it
    end ``failed``.  ``status`` reads the emulator's clock.
    """

    asset_id: str
    seq: int
    workspace_id: str
    uploaded_via: str  # "direct", "url" or "signed_url"
    file_name: str
    url: str
    created_at: float
    content_type: str
    upload_content_type: str | None = None
    project_id: str | None = None
    folder: str | None = None
    source: str | None = None
    idempotency_key: str | None = None
    data: bytes | None = field(default=None, repr=False)
    sha256: str | None = None
    size: int | None = None
    width: int | None = None
    height: int | None = None
    ready_at: float | None = None
    failure: str | None = None
    upload_token: str | None = None
    upload_fields: dict[str, str] = field(default_factory=dict)
    expires_at: float | None = None
    uploaded_at: float | None = None
    completed_at: float | None = None
    storage_type: str | None = None  # the storage file part's Content-Type
    transfers: int = 0  # storage transfers (signed uploads) accepted
    reservations: int = 0  # signed reservations issued (create + retries)
    clock: Callable[[], float] = field(default=lambda: 0.0, repr=False)

    def status_at(self, now: float) -> str:
        """``pending_upload``, ``ready`` or ``failed`` at clock time ``now``."""
        if self.ready_at is None or now < self.ready_at:
            return "pending_upload"
        return "failed" if self.failure else "ready"

    @property
    def status(self) -> str:
        """The status now, on the emulator's clock."""
        return self.status_at(self.clock())

    def failure_message_at(self, now: float) -> str | None:
        """The failure message, once the asset has failed."""
        return self.failure if self.status_at(now) == "failed" else None

    def reservation_open(self, now: float) -> bool:
        """Whether the signed upload may still be sent (issued, not expired, not completed)."""
        return (
            self.upload_token is not None
            and self.completed_at is None
            and self.expires_at is not None
            and now < self.expires_at
        )

    def keep(self, data: bytes, content_type: str) -> None:
        """Hold these bytes as the asset's file."""
        self.data = data
        self.content_type = content_type
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.size = len(data)
        size = uploads.image_size(data) if content_type.startswith("image/") else None
        self.width, self.height = size if size else (None, None)

    def forget_bytes(self) -> None:
        """Drop the file (a fresh reservation starts over)."""
        self.data = self.sha256 = None
        self.size = self.width = self.height = None
        self.uploaded_at = self.completed_at = self.ready_at = None
        self.failure = self.storage_type = None

    def summary(self, now: float) -> dict[str, Any]:
        """The record as JSON-ready data, for ``/_emulator/state``."""
        return {
            "asset_id": self.asset_id,
            "status": self.status_at(now),
            "uploaded_via": self.uploaded_via,
            "file_name": self.file_name,
            "content_type": self.content_type,
            "upload_content_type": self.upload_content_type,
            "size": self.size,
            "sha256": self.sha256,
            "url": self.url,
            "workspace_id": self.workspace_id,
            "project_id": self.project_id,
            "folder": self.folder,
            "source": self.source,
            "idempotency_key": self.idempotency_key,
            "created_at": self.created_at,
            "ready_at": self.ready_at,
            "expires_at": self.expires_at,
            "transfers": self.transfers,
            "reservations": self.reservations,
            "failure_message": self.failure_message_at(now),
        }


@dataclass(frozen=True)
class AssetResult:
    """What a create, complete or retry did: the asset, and whether it is a key replay."""

    record: AssetRecord
    replayed: bool = False


@dataclass
class _KeyEntry:
    asset_id: str
    at: float


class AssetStore:
    """Every asset, signed-upload token and asset idempotency key of one emulator."""

    def __init__(self, config: EmulatorConfig, dice: FaultDice, lock: threading.RLock) -> None:
        self.config = config
        self.dice = dice
        self._lock = lock
        self.records: dict[str, AssetRecord] = {}
        self._tokens: dict[str, str] = {}
        self._keys: dict[tuple[str, str, str], _KeyEntry] = {}

    def now(self) -> float:
        """The emulator's clock."""
        return self.config.now()

    def reset(self) -> None:
        """Forget every asset, token and key."""
        with self._lock:
            self.records.clear()
            self._tokens.clear()
            self._keys.clear()

    # -- the API's operations ----------------------------------------------------------

    def create(self, request: AssetRequest, key: str | None) -> AssetResult:
        """Make an asset by one of the three paths, or replay the one ``key`` made.

        Raises:
            ApiProblem: 409 ``idempotency_duplicate`` for a live key in ``conflict`` mode.
        """
        with self._lock:
            now = self.now()
            scope = ("create", request.workspace_id, key or "")
            existing = self._recall(scope, now) if key else None
            if existing is not None:
                return AssetResult(existing, replayed=True)
            record = self._new(request, key, now)
            self.records[record.asset_id] = record
            self._bind(scope, record, now)
            return AssetResult(record)

    def get(self, asset_id: str) -> AssetRecord:
        """The asset with this id.

        Raises:
            ApiProblem: 404 ``not_found`` (for a missing and an inaccessible asset alike).
        """
        record = self.records.get(asset_id)
        if record is None or record.workspace_id != self.config.workspace_id:
            raise ApiProblem("not_found", "Asset not found.")
        return record

    def complete(self, asset_id: str, key: str | None) -> AssetResult:
        """``POST /assets/{id}/complete``: the bytes are at the storage, ingest them.

        Raises:
            ApiProblem: 404; 409 ``conflict`` for a non-signed asset, a second complete or
                a complete before any bytes arrived; 409 ``idempotency_duplicate``.
        """
        with self._lock:
            now, record = self.now(), self.get(asset_id)
            scope = ("complete", asset_id, key or "")
            if key and self._recall(scope, now) is not None:
                return AssetResult(record, replayed=True)
            if record.uploaded_via != "signed_url":
                raise ApiProblem("conflict", "Only signed uploads are completed.")
            if record.completed_at is not None:
                raise ApiProblem("conflict", "The asset upload is already complete.")
            if record.data is None:
                raise ApiProblem("conflict", "No file has been uploaded for this asset yet.")
            record.completed_at = now
            record.ready_at = now + uploads.INGEST_SECONDS / self.config.speed
            record.failure = self._ingest_problem(record)
            self._bind(scope, record, now)
            return AssetResult(record)

    def retry(self, asset_id: str, key: str | None) -> AssetResult:
        """``POST /assets/{id}/retry``: a fresh reservation for a failed or unfinished upload.

        Raises:
            ApiProblem: 404; 409 ``conflict`` for a non-signed asset or one that was
                completed and did not fail; 409 ``idempotency_duplicate``.
        """
        with self._lock:
            now, record = self.now(), self.get(asset_id)
            scope = ("retry", asset_id, key or "")
            if key and self._recall(scope, now) is not None:
                return AssetResult(record, replayed=True)
            if record.uploaded_via != "signed_url":
                message = "Only signed uploads can be retried; create a new asset."
                raise ApiProblem("conflict", message)
            if record.completed_at is not None and record.status_at(now) != "failed":
                raise ApiProblem("conflict", "The asset upload did not fail.")
            record.forget_bytes()
            self._reserve(record, now)
            self._bind(scope, record, now)
            return AssetResult(record)

    def listing(
        self,
        workspace_id: str | None,
        project_id: str | None,
        query: str | None,
        before: int | None,
    ) -> list[AssetRecord]:
        """Assets newest first, filtered; ``before`` is a sequence-number cursor."""
        text = (query or "").strip().lower()
        with self._lock:
            found = sorted(self.records.values(), key=lambda r: r.seq, reverse=True)
        return [
            r
            for r in found
            if r.workspace_id == (workspace_id or self.config.workspace_id)
            and (not project_id or r.project_id == project_id)
            and (not text or text in r.file_name.lower() or text in (r.folder or "").lower())
            and (before is None or r.seq < before)
        ]

    # -- the fake storage ----------------------------------------------------------------

    def by_token(self, token: str) -> AssetRecord | None:
        """The asset a signed-upload token was issued for (only its latest token counts)."""
        asset_id = self._tokens.get(token)
        return self.records.get(asset_id) if asset_id else None

    def accept_upload(self, record: AssetRecord, file: FilePart) -> None:
        """Keep the bytes a storage transfer brought (a later transfer overwrites them)."""
        with self._lock:
            now = self.now()
            kind = stored_type(file, record.upload_content_type) or uploads.OCTET_STREAM
            record.keep(file.data, kind)
            record.storage_type = file.content_type
            record.uploaded_at = now
            record.transfers += 1

    # -- run inputs and inspection ---------------------------------------------------------

    def input_problem(self, url: str) -> str | None:
        """Why a run may not use ``url`` yet, if it is one of this emulator's asset URLs."""
        asset_id = uploads.asset_id_in_url(url)
        if asset_id is None:
            return None
        record = self.records.get(asset_id)
        if record is None or record.url != url.strip():
            return f"is not the URL of an asset in this workspace ({asset_id})"
        status = record.status_at(self.now())
        if status != "ready":
            return f"asset {asset_id} is not ready (status {status}); wait until it is ready"
        return None

    def by_sha256(self) -> dict[str, int]:
        """How many assets hold each distinct file (by the SHA-256 of its bytes)."""
        with self._lock:
            counts = Counter(r.sha256 for r in self.records.values() if r.sha256)
        return dict(counts)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every asset as JSON-ready data, oldest first."""
        now = self.now()
        with self._lock:
            return [r.summary(now) for r in sorted(self.records.values(), key=lambda r: r.seq)]

    # -- internals --------------------------------------------------------------------------

    def _new(self, request: AssetRequest, key: str | None, now: float) -> AssetRecord:
        asset_id = f"asset_{secrets.token_hex(12)}"
        name = request.file_name or self._default_name(request, asset_id)
        record = AssetRecord(
            asset_id=asset_id,
            seq=len(self.records) + 1,
            workspace_id=request.workspace_id,
            uploaded_via=request.via,
            file_name=name,
            url=uploads.asset_url(asset_id, name),
            created_at=now,
            content_type=uploads.normalise(request.content_type or uploads.OCTET_STREAM),
            upload_content_type=request.content_type,
            project_id=request.project_id,
            folder=request.folder,
            source=request.source,
            idempotency_key=key,
            clock=self.config.now,
        )
        if request.via == "direct":
            assert request.data is not None and request.stored_type is not None
            record.keep(request.data, request.stored_type)
            record.uploaded_at = record.ready_at = now
        elif request.via == "url":
            self._fetch(record, now)
        else:
            self._reserve(record, now)
        return record

    @staticmethod
    def _default_name(request: AssetRequest, asset_id: str) -> str:
        if request.source:
            from_url = uploads.file_name_from_url(request.source)
            if from_url:
                return from_url
        guess = {v: k for k, v in reversed(uploads.EXTENSIONS.items())}
        ext = guess.get(uploads.normalise(request.content_type or ""), "")
        return f"{asset_id}{ext}"

    def _fetch(self, record: AssetRecord, now: float) -> None:
        """Path B: "fetch" the source now; the result shows once the fetch time passed."""
        assert record.source is not None
        wanted = record.upload_content_type or uploads.guess_type(record.file_name)
        record.ready_at = now + uploads.FETCH_SECONDS / self.config.speed
        record.uploaded_at = record.ready_at
        if self.dice.fate(FaultKind.FETCH_REFUSED, record.source):
            record.failure = "Could not fetch the source URL: the remote host refused the request."
            return
        if wanted and not uploads.accepted(wanted):
            record.content_type = uploads.normalise(wanted)
            record.failure = f"Unsupported content type '{record.content_type}'."
            return
        data, kind = render_fetched(record.source, uploads.normalise(wanted or "image/png"))
        record.keep(data, kind)

    def _reserve(self, record: AssetRecord, now: float) -> None:
        """Path C: a signed upload reservation (a POST policy for the fake storage)."""
        if record.upload_token:
            self._tokens.pop(record.upload_token, None)
        token = secrets.token_urlsafe(18)
        record.upload_token = token
        record.expires_at = now + self.config.upload_ttl
        record.reservations += 1
        record.upload_fields = self._policy_fields(record, token)
        self._tokens[token] = record.asset_id

    @staticmethod
    def _policy_fields(record: AssetRecord, token: str) -> dict[str, str]:
        """GCS-style POST policy fields, to be sent verbatim and before the file."""
        assert record.expires_at is not None
        key = f"assets/{record.workspace_id}/{record.asset_id}/{record.file_name}"
        conditions: list[Any] = [{"key": key}]
        fields = {"key": key}
        if record.upload_content_type:
            fields["Content-Type"] = record.upload_content_type
            conditions.append({"Content-Type": record.upload_content_type})
        policy = {"expiration": iso(record.expires_at), "conditions": conditions}
        encoded = base64.b64encode(json.dumps(policy, separators=(",", ":")).encode()).decode()
        signature = hmac.new(_SECRET, f"{token}/{encoded}".encode(), hashlib.sha256).hexdigest()
        date = datetime.fromtimestamp(record.created_at, UTC).strftime("%Y%m%d")
        return {
            **fields,
            "policy": encoded,
            "x-goog-algorithm": "GOOG4-HMAC-SHA256",
            "x-goog-credential": f"flora-emulator/{date}/auto/storage/goog4_request",
            "x-goog-date": f"{date}T000000Z",
            "x-goog-signature": signature,
        }

    def _ingest_problem(self, record: AssetRecord) -> str | None:
        """Why a completed signed upload ends ``failed``; None if it becomes ``ready``."""
        assert record.data is not None
        if not record.data:
            return "The uploaded file is empty."
        if not uploads.accepted(record.content_type):
            return f"Unsupported content type '{record.content_type}'."
        if record.content_type.startswith("image/") and uploads.too_many_pixels(record.data):
            return "Image exceeds 150 megapixels."
        if self.dice.fate(FaultKind.INGEST_FAILURE, record.sha256 or record.asset_id):
            return "Processing the uploaded file failed."
        return None

    def _recall(self, scope: tuple[str, str, str], now: float) -> AssetRecord | None:
        """The asset a live key made; raises in ``conflict`` mode.  Old keys are forgotten."""
        entry = self._keys.get(scope)
        if entry is None:
            return None
        window = self.config.key_window
        if window is not None and now - entry.at >= window:
            del self._keys[scope]
            return None
        if self.config.asset_idempotency_mode == "conflict":
            raise ApiProblem("idempotency_duplicate")
        return self.records.get(entry.asset_id)

    def _bind(self, scope: tuple[str, str, str], record: AssetRecord, now: float) -> None:
        if scope[2]:
            self._keys[scope] = _KeyEntry(record.asset_id, now)

    # -- the state file ---------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """Every asset (bytes in base64), token and key, as JSON-ready data."""
        with self._lock:
            records = sorted(self.records.values(), key=lambda r: r.seq)
            return {
                "records": [_record_data(r) for r in records],
                "tokens": dict(self._tokens),
                "keys": [[*scope, e.asset_id, e.at] for scope, e in self._keys.items()],
            }

    def restore(self, data: dict[str, Any]) -> None:
        """Replace every asset, token and key with what ``dump`` wrote."""
        with self._lock:
            self.reset()
            for item in data["records"]:
                record = _record_from(item, self.config.now)
                self.records[record.asset_id] = record
            self._tokens.update(data["tokens"])
            for op, dest, key, asset_id, at in data["keys"]:
                self._keys[(op, dest, key)] = _KeyEntry(asset_id, at)


def _record_data(record: AssetRecord) -> dict[str, Any]:
    """An asset as JSON-ready data: every field but the clock, bytes in base64."""
    data = {f.name: getattr(record, f.name) for f in fields(record) if f.name != "clock"}
    raw = record.data
    data["data"] = None if raw is None else base64.b64encode(raw).decode("ascii")
    return data


def _record_from(data: dict[str, Any], clock: Callable[[], float]) -> AssetRecord:
    """The asset ``_record_data`` wrote, reading the emulator's clock."""
    raw = data.get("data")
    values = {**data, "data": None if raw is None else base64.b64decode(raw)}
    return AssetRecord(**values, clock=clock)

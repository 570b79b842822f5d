"""The ``uploads`` table: each distinct input file's FLORA asset, with guarded state changes.

``store.Ledger`` inherits these methods.  Like the jobs' transitions, each is one short
transaction with ``UPDATE uploads ... WHERE sha256 = :k AND state IN (:expected)``; a row
in any other state raises :class:`~flora_batch.errors.LedgerConflict` and nothing
changes.  The moves (``uploads.py`` drives them)::

    record_uploads      (new)                  -> planned
    begin_upload        planned                -> uploading   (key committed, sent_at kept)
    note_asset          uploading              -> uploading   (asset id, once: never replaced)
    set_upload_step     uploading              -> uploading   (signed upload progress)
    mark_upload_ready   uploading              -> ready       (asset id and URL)
    mark_upload_failed  planned | uploading    -> failed
    reopen_upload       failed | ready | planned | uploading -> planned   (attempt n+1, new key)

``reopen_upload`` is the only way back: after a definite failure, when a ready asset is
gone, or when the batch now uploads into another workspace (the only case that may
abandon an ``uploading`` row: its key and asset belong to the old workspace).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, RowMapping, select, update

from ..errors import LedgerConflict
from ..types import UploadRecord, UploadState
from . import bulk
from .core import LedgerCore
from .tables import uploads

U = UploadState
_LOOKUP_CHUNK = 500


def upload_record(row: RowMapping) -> UploadRecord:
    """An ``uploads`` row as an UploadRecord."""
    values = dict(row)
    values["state"] = UploadState(values["state"])
    return UploadRecord(**values)


def _planned_row(rec: UploadRecord) -> dict[str, Any]:
    return {
        "sha256": rec.sha256,
        "source": rec.source,
        "file_name": rec.file_name,
        "size": rec.size,
        "content_type": rec.content_type,
        "workspace_id": rec.workspace_id,
        "state": UploadState.PLANNED.value,
        "idempotency_key": rec.idempotency_key,
        "attempt": rec.attempt,
        "created_at": rec.created_at or 0.0,
        "updated_at": rec.updated_at or rec.created_at or 0.0,
    }


class UploadLedger(LedgerCore):
    """The upload half of ``store.Ledger``."""

    def record_uploads(self, records: Sequence[UploadRecord]) -> int:
        """Insert the planned rows whose ``sha256`` is new; return how many were new.

        Rows already in the ledger are left exactly as they are, whatever their state.
        """
        wanted = {r.sha256: r for r in records}
        with self._write() as conn:
            existing = set(_rows(conn, list(wanted)))
            rows = [_planned_row(r) for k, r in wanted.items() if k not in existing]
            bulk.insert_rows(conn, uploads, rows)
        return len(rows)

    def uploads(self, keys: Iterable[str] | None = None) -> dict[str, UploadRecord]:
        """Upload rows by ``sha256`` (only ``keys`` when given)."""
        with self._read() as conn:
            if keys is None:
                found = conn.execute(select(uploads)).mappings().all()
                return {r["sha256"]: upload_record(r) for r in found}
            return _rows(conn, list(keys))

    def upload(self, key: str) -> UploadRecord:
        """One upload row.

        Raises:
            LedgerConflict: no row has this key.
        """
        found = self.uploads([key])
        if key not in found:
            raise LedgerConflict(f"upload {key}: no such upload in the ledger", key=key)
        return found[key]

    def begin_upload(self, key: str, *, via: str, now: float) -> UploadRecord:
        """``planned -> uploading``: the create is about to leave with the row's key.

        The commit is durable (on SQLite, ``synchronous=FULL``) before this returns, so
        before the create is sent, as ``mark_submitting``'s: see docs/design.md,
        "Durability of the ledger".
        """
        with self._write(key, durable=True) as conn:
            row = _one(conn, key)
            values: dict[str, Any] = {"via": via, "error": None}
            if row["sent_at"] is None:
                values["sent_at"] = now
            return _move(conn, row, (U.PLANNED,), U.UPLOADING, now, values)

    def note_asset(
        self, key: str, asset_id: str, *, url: str | None, step: str | None, now: float
    ) -> UploadRecord:
        """Record the asset a create made (``uploading``); a row never changes its asset."""
        with self._write(key) as conn:
            row = _one(conn, key)
            if row["asset_id"] not in (None, asset_id):
                raise LedgerConflict(
                    f"upload {key}: cannot note asset {asset_id}: it has {row['asset_id']}",
                    key=key,
                )
            values = {"asset_id": asset_id, "url": url or row["url"], "step": step}
            return _move(conn, row, (U.UPLOADING,), U.UPLOADING, now, values)

    def set_upload_step(self, key: str, step: str, *, now: float) -> UploadRecord:
        """How far a signed upload got: ``reserved``, ``transferred`` or ``completed``."""
        with self._write(key) as conn:
            row = _one(conn, key)
            return _move(conn, row, (U.UPLOADING,), U.UPLOADING, now, {"step": step})

    def mark_upload_ready(
        self,
        key: str,
        *,
        asset_id: str,
        url: str,
        size: int | None,
        content_type: str | None,
        now: float,
        replaces: str | None = None,
    ) -> UploadRecord:
        """``uploading -> ready``: FLORA said the asset is ready, at this URL.

        The row's asset may be replaced only when the caller names it (``replaces``): a
        web image whose fetch failed, uploaded from a download instead.
        """
        with self._write(key) as conn:
            row = _one(conn, key)
            if row["asset_id"] not in (None, asset_id, replaces):
                raise LedgerConflict(
                    f"upload {key}: cannot be ready as {asset_id}: it has {row['asset_id']}",
                    key=key,
                )
            values = {
                "asset_id": asset_id,
                "url": url,
                "size": size if size is not None else row["size"],
                "content_type": content_type or row["content_type"],
                "ready_at": now,
                "error": None,
            }
            return _move(conn, row, (U.UPLOADING,), U.READY, now, values)

    def mark_upload_failed(self, key: str, *, error: str, now: float) -> UploadRecord:
        """``planned | uploading -> failed``: this attempt surely cannot succeed."""
        with self._write(key) as conn:
            row = _one(conn, key)
            return _move(conn, row, (U.PLANNED, U.UPLOADING), U.FAILED, now, {"error": error})

    def reopen_upload(
        self, key: str, *, workspace_id: str, idempotency_key: str, reason: str, now: float
    ) -> UploadRecord:
        """``failed | ready | planned | uploading -> planned``: attempt n+1, ``idempotency_key``.

        The caller reopens an ``uploading`` row only to move it to another workspace.
        """
        with self._write(key) as conn:
            row = _one(conn, key)
            values = {
                "attempt": row["attempt"] + 1,
                "idempotency_key": idempotency_key,
                "workspace_id": workspace_id,
                "error": reason,
                **dict.fromkeys(("via", "step", "asset_id", "url", "sent_at", "ready_at")),
            }
            sources = (U.FAILED, U.READY, U.PLANNED, U.UPLOADING)
            return _move(conn, row, sources, U.PLANNED, now, values)


def _one(conn: Connection, key: str) -> RowMapping:
    query = select(uploads).where(uploads.c.sha256 == key).with_for_update()
    row = conn.execute(query).mappings().one_or_none()
    if row is None:
        raise LedgerConflict(f"upload {key}: no such upload in the ledger", key=key)
    return row


def _move(
    conn: Connection,
    row: RowMapping,
    sources: tuple[UploadState, ...],
    target: UploadState,
    now: float,
    values: Mapping[str, Any],
) -> UploadRecord:
    """The guarded UPDATE; LedgerConflict naming both states when the row is elsewhere."""
    key = row["sha256"]
    guard = [uploads.c.sha256 == key, uploads.c.state.in_([s.value for s in sources])]
    result = conn.execute(
        update(uploads).where(*guard).values(state=target.value, updated_at=now, **values)
    )
    if result.rowcount != 1:
        wanted = " or ".join(s.value for s in sources)
        raise LedgerConflict(
            f"upload {key}: cannot move to {target.value}: it is {row['state']}, expected {wanted}",
            key=key,
        )
    fresh = conn.execute(select(uploads).where(uploads.c.sha256 == key)).mappings().one()
    return upload_record(fresh)


def _rows(conn: Connection, keys: list[str]) -> dict[str, UploadRecord]:
    found: dict[str, UploadRecord] = {}
    for start in range(0, len(keys), _LOOKUP_CHUNK):
        chunk = keys[start : start + _LOOKUP_CHUNK]
        query = select(uploads).where(uploads.c.sha256.in_(chunk))
        found.update({r["sha256"]: upload_record(r) for r in conn.execute(query).mappings()})
    return found

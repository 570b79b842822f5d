"""Transactions and the guarded state change that every ``Ledger`` transition is built on.

``LedgerCore`` holds the engine and offers:

* ``_write()`` / ``_read()``: one short transaction (SQLite writes take ``BEGIN
  IMMEDIATE``), with driver errors turned into ``LedgerError`` / ``LedgerConflict``;
* ``_expect()``: read the job's row (``FOR UPDATE`` on PostgreSQL) and check its state;
* ``_apply()``: ``UPDATE jobs ... WHERE key = :k AND state IN (:sources)`` plus one
  ``events`` row; if no row matched, LedgerConflict names expected and actual states.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Connection, Engine, RowMapping, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from ..errors import LeaseLost, LedgerConflict, LedgerError
from ..types import JobRecord, JobState
from . import connect, lock, outputs_sql
from .moves import Move
from .records import conflict_message, dumps, job_record
from .tables import events, jobs


class LedgerCore:
    """Engine, runner lock and transaction plumbing; ``store.Ledger`` adds the API."""

    def __init__(self, engine: Engine, *, sqlite_path: Path | None = None) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**{connect.BEGIN_MODE: "IMMEDIATE"})
        self._sqlite_path = sqlite_path
        self._lock: lock.RunnerLock | None = None
        self._closed = False
        #: The database URL, any password masked.
        self.url = engine.url.render_as_string(hide_password=True)
        #: Set by ``flora-batch worker`` (``cluster.py``): then a job changes only while this
        #: worker holds its lease (LeaseLost otherwise), and every event names the worker.
        self.worker_id: str | None = None

    def close(self) -> None:
        """Release the runner lock and every connection; the ledger cannot be used after."""
        self.release_runner_lock()
        self._closed = True
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def acquire_runner_lock(self, name: str = "runner") -> None:
        """Hold the runner lock until :meth:`release_runner_lock` or :meth:`close`.

        Raises:
            LedgerBusy: another live process holds it (checked once, never waited for).
        """
        self._check_open()
        if self._lock is None:
            self._lock = lock.acquire(self._engine, self._sqlite_path, name, self.url)

    def release_runner_lock(self) -> None:
        """Let go of the runner lock if this ledger holds it."""
        if self._lock is not None:
            held, self._lock = self._lock, None
            held.release()

    # -- transactions ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"ledger {self.url} is closed")

    @contextmanager
    def _write(self, key: str = "") -> Iterator[Connection]:
        """One write transaction; SQLite takes its write lock at ``BEGIN``."""
        self._check_open()
        with self._translate(key), self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """One read transaction."""
        self._check_open()
        with self._translate(""), self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _translate(self, key: str) -> Iterator[None]:
        try:
            yield
        except IntegrityError as exc:
            raise LedgerConflict(f"ledger {self.url}: {exc.orig}", key=key) from exc
        except DBAPIError as exc:
            raise LedgerError(f"ledger {self.url}: {exc.orig}") from exc

    # -- the guarded transition --------------------------------------------------------

    def _row(self, conn: Connection, key: str, action: str) -> RowMapping:
        """The job's row, locked for this transaction; LedgerConflict if there is none."""
        query = select(jobs).where(jobs.c.key == key).with_for_update()
        row = conn.execute(query).mappings().one_or_none()
        if row is None:
            raise LedgerConflict(conflict_message(key, action, None, ()), key=key)
        if self.worker_id is not None and row["worker_id"] != self.worker_id:
            holder = row["worker_id"] or "no worker"
            message = f"job {key}: cannot {action}: {holder} holds it, not {self.worker_id}"
            raise LeaseLost(message, key=key)
        return row

    def _expect(self, conn: Connection, key: str, move: Move) -> RowMapping:
        """The job's row, if its state allows ``move``; else LedgerConflict."""
        row = self._row(conn, key, move.action)
        self._check(row, move)
        return row

    @staticmethod
    def _check(row: RowMapping, move: Move) -> None:
        """LedgerConflict unless the row's state allows ``move``."""
        if not move.allows(row["state"]):
            message = conflict_message(row["key"], move.action, row["state"], move.sources)
            raise LedgerConflict(message, key=row["key"])

    def _apply(
        self,
        conn: Connection,
        row: RowMapping,
        move: Move,
        now: float,
        values: Mapping[str, Any],
        detail: Mapping[str, Any],
    ) -> None:
        """The guarded UPDATE and its event, in the caller's transaction."""
        key = row["key"]
        guard = [jobs.c.key == key, jobs.c.state.in_([s.value for s in move.sources])]
        if move.no_run:
            guard.append(jobs.c.run_id.is_(None))
        result = conn.execute(
            update(jobs).where(*guard).values(state=move.target.value, updated_at=now, **values)
        )
        if result.rowcount != 1:
            actual = conn.execute(select(jobs.c.state).where(jobs.c.key == key)).scalar()
            message = conflict_message(key, move.action, actual, move.sources)
            raise LedgerConflict(message, key=key)
        self._log(conn, key, now, row["state"], move.target, {"action": move.action, **detail})

    def _move(
        self,
        key: str,
        move: Move,
        now: float,
        values: Mapping[str, Any],
        detail: Mapping[str, Any] | None = None,
    ) -> JobRecord:
        """A whole transition whose new values do not depend on the current row."""
        with self._write(key) as conn:
            row = self._expect(conn, key, move)
            self._apply(conn, row, move, now, values, detail or {})
            return self._record(conn, key)

    def _log(
        self,
        conn: Connection,
        key: str,
        at: float,
        from_state: str | None,
        to_state: str | None,
        detail: Mapping[str, Any],
    ) -> None:
        """Append one event."""
        row = {"job_key": key, "at": at, "from_state": from_state, "to_state": to_state}
        if self.worker_id is not None:
            detail = {**detail, "worker": self.worker_id}
        conn.execute(insert(events).values(**row, detail=dumps(detail)))

    def _first_send(self, conn: Connection, key: str) -> bool:
        """Whether the latest ``submitting`` was the first create with the current key."""
        query = (
            select(events.c.detail)
            .where(events.c.job_key == key, events.c.to_state == JobState.SUBMITTING.value)
            .order_by(events.c.id.desc())
            .limit(1)
        )
        detail = conn.execute(query).scalar()
        return detail is None or bool(json.loads(detail).get("first_send", True))

    def _record(self, conn: Connection, key: str) -> JobRecord:
        """The job as a JobRecord with its outputs; LedgerConflict if there is none."""
        row = conn.execute(select(jobs).where(jobs.c.key == key)).mappings().one_or_none()
        if row is None:
            raise LedgerConflict(f"job {key}: no such job in the ledger", key=key)
        return job_record(row, outputs_sql.records(conn, key))

    def _set(self, conn: Connection, key: str, **values: Any) -> None:
        """Change columns of a job without a state change."""
        conn.execute(update(jobs).where(jobs.c.key == key).values(**values))

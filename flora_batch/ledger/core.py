"""Transactions and the guarded state change that every ``Ledger`` transition is built on.

``LedgerCore`` holds the engine and offers:

* ``_write()`` / ``_read()``: one short SQLAlchemy transaction (SQLite writes take ``BEGIN
  IMMEDIATE``), with driver errors turned into ``LedgerError`` / ``LedgerConflict``;
* ``_tx()``: the same on the driver's own cursor (a :class:`~.tx.Tx`), for the job
  transitions, which run several times per job (see ``tx.py`` for why);
* ``_row()``: the job's row (``FOR UPDATE`` on PostgreSQL), refusing a job that another
  worker holds (LeaseLost: the cluster's fence);
* ``_guarded()``: ``UPDATE jobs ... WHERE key = :k AND state IN (:sources) RETURNING *``
  plus one ``events`` row; if no row matched, LedgerConflict names expected and actual
  states (or LeaseLost names the holder).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from ..errors import LeaseLost, LedgerConflict, LedgerError
from ..types import JobRecord, OutputRecord
from . import connect, lock, outputs_sql
from . import tx as sql
from .moves import Move
from .records import conflict_message, dumps, job_record


class LedgerCore:
    """Engine, runner lock and transaction plumbing; ``store.Ledger`` adds the API."""

    def __init__(self, engine: Engine, *, sqlite_path: Path | None = None) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**{connect.BEGIN_MODE: "IMMEDIATE"})
        self._sqlite = engine.dialect.name == "sqlite"
        self._dbapi: Any = engine.dialect.loaded_dbapi
        self._sqlite_path = sqlite_path
        # The SQLite connection that _tx keeps checked out, for the creating thread only.
        self._owner = threading.get_ident()
        self._kept: Any = None
        self._kept_busy = False
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
        if self._kept is not None:
            kept, self._kept = self._kept, None
            kept.close()
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
    def _tx(self, key: str = "", *, write: bool = True, durable: bool = False) -> Iterator[sql.Tx]:
        """One transaction on the driver's cursor; SQLite writes take the lock at ``BEGIN``.

        ``durable``: on SQLite this one commit runs with ``synchronous=FULL`` (the WAL is
        fsynced before the commit returns) instead of the connection's ``NORMAL``; see
        ``docs/design.md`` ("Durability of the ledger").  PostgreSQL commits are always
        durable (``synchronous_commit`` is on by default).
        """
        self._check_open()
        with self._translate(key):
            raw = self._checkout()
            try:
                cursor = raw.driver_connection.cursor()
                try:
                    with self._begin(raw, cursor, write=write, durable=durable and self._sqlite):
                        yield sql.Tx(cursor, self._engine.dialect)
                finally:
                    with contextlib.suppress(self._dbapi.Error):
                        cursor.close()
            finally:
                self._checkin(raw)

    @contextmanager
    def _begin(self, raw: Any, cursor: Any, *, write: bool, durable: bool) -> Iterator[None]:
        """BEGIN, then COMMIT (ROLLBACK on any error); ``durable``: the SQLite FULL sync."""
        if durable:
            cursor.execute(connect.SYNC_FULL)
        try:
            if self._sqlite:  # psycopg begins by itself
                cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield
            raw.driver_connection.commit()
        except BaseException:
            self._rollback(raw)
            raise
        finally:
            if durable:  # failing here only leaves the connection more careful
                with contextlib.suppress(self._dbapi.Error):
                    cursor.execute(connect.SYNC_NORMAL)

    def _checkout(self) -> Any:
        """A DBAPI connection from the pool; on a SQLite file, the one ``_tx`` keeps.

        A checkout and checkin through SQLAlchemy's pool cost ~15 µs of CPU, per
        transaction, several times per job.  Only on a SQLite file, only in the thread
        that opened the ledger and never nested: a PostgreSQL connection kept idle could
        die unseen (the pool pings it at each checkout instead), and in-memory SQLite has
        one connection anyway.
        """
        if self._sqlite_path is None or self._kept_busy or threading.get_ident() != self._owner:
            return self._engine.raw_connection()
        if self._kept is None:
            self._kept = self._engine.raw_connection()
        self._kept_busy = True
        return self._kept

    def _checkin(self, raw: Any) -> None:
        """Give back what :meth:`_checkout` gave; an invalidated kept connection is dropped."""
        if raw is not self._kept:
            raw.close()
            return
        self._kept_busy = False
        if not raw.is_valid:
            self._kept = None
            raw.close()

    def _rollback(self, raw: Any) -> None:
        """Roll back; a connection that cannot even do that is dropped from the pool."""
        try:
            raw.driver_connection.rollback()
        except self._dbapi.Error:
            raw.invalidate()

    @contextmanager
    def _translate(self, key: str) -> Iterator[None]:
        try:
            yield
        except IntegrityError as exc:
            raise LedgerConflict(f"ledger {self.url}: {exc.orig}", key=key) from exc
        except DBAPIError as exc:
            raise LedgerError(f"ledger {self.url}: {exc.orig}") from exc
        except self._dbapi.IntegrityError as exc:  # raised on a Tx's raw cursor
            raise LedgerConflict(f"ledger {self.url}: {exc}", key=key) from exc
        except self._dbapi.Error as exc:
            raise LedgerError(f"ledger {self.url}: {exc}") from exc

    # -- the guarded transition --------------------------------------------------------

    def _row(self, tx: sql.Tx, key: str, action: str) -> dict[str, Any]:
        """The job's row, locked for this transaction; LedgerConflict if there is none."""
        row = tx.one(sql.LOCK_JOB, {"k": key})
        if row is None:
            raise LedgerConflict(conflict_message(key, action, None, ()), key=key)
        self._fence(row, key, action)
        return row

    def _fence(self, row: Mapping[str, Any], key: str, action: str) -> None:
        """LeaseLost if this ledger is a cluster worker's and another worker holds the job."""
        if self.worker_id is not None and row["worker_id"] != self.worker_id:
            holder = row["worker_id"] or "no worker"
            message = f"job {key}: cannot {action}: {holder} holds it, not {self.worker_id}"
            raise LeaseLost(message, key=key)

    @staticmethod
    def _check(row: Mapping[str, Any], move: Move) -> None:
        """LedgerConflict unless the row's state allows ``move``."""
        if not move.allows(row["state"]):
            message = conflict_message(row["key"], move.action, row["state"], move.sources)
            raise LedgerConflict(message, key=row["key"])

    def _save_file(
        self, tx: sql.Tx, move: Move, key: str, output_id: str, file: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Set an output's file columns if the job is downloading; the job's row."""
        row = self._row(tx, key, move.action)
        self._check(row, move)
        outputs_sql.set_file(tx, key, output_id, file)
        return row

    def _guarded(
        self,
        tx: sql.Tx,
        key: str,
        move: Move,
        now: float,
        values: Mapping[str, Any],
        detail: Mapping[str, Any],
        *,
        from_state: str | None = None,
    ) -> dict[str, Any]:
        """The guarded UPDATE (returning the new row) and its event, in ``tx``.

        ``from_state`` (for the event) is needed only when ``move`` has several sources:
        RETURNING gives the new row, and with one source the old state is known anyway.
        """
        leased = self.worker_id is not None
        params = {f"set_{name}": value for name, value in values.items()}
        params.update(k=key, now=now, w=self.worker_id)
        row = tx.one(sql.move_statement(move, tuple(values), leased=leased), params)
        if row is None:
            self._refuse(tx, key, move)
        if from_state is None:
            assert len(move.sources) == 1, f"{move.action}: which state did it leave?"
            from_state = move.sources[0].value
        self._log(tx, key, now, from_state, move.target.value, {"action": move.action, **detail})
        return row

    def _refuse(self, tx: sql.Tx, key: str, move: Move) -> NoReturn:
        """Why the guarded UPDATE matched no row: no job, another worker's, or its state."""
        row = tx.one(sql.JOB_STATE, {"k": key})
        if row is None:
            raise LedgerConflict(conflict_message(key, move.action, None, ()), key=key)
        self._fence(row, key, move.action)
        raise LedgerConflict(
            conflict_message(key, move.action, row["state"], move.sources), key=key
        )

    def _move(
        self,
        key: str,
        move: Move,
        now: float,
        values: Mapping[str, Any],
        detail: Mapping[str, Any] | None = None,
    ) -> JobRecord:
        """A whole transition whose new values do not depend on the current row."""
        with self._tx(key) as tx:
            from_state = None
            if len(move.sources) > 1:  # the event names the state left
                row = self._row(tx, key, move.action)
                self._check(row, move)
                from_state = row["state"]
            new = self._guarded(tx, key, move, now, values, detail or {}, from_state=from_state)
            return self._record(tx, new)

    def _log(
        self,
        tx: sql.Tx,
        key: str,
        at: float,
        from_state: str | None,
        to_state: str | None,
        detail: Mapping[str, Any],
    ) -> None:
        """Append one event."""
        if self.worker_id is not None:
            detail = {**detail, "worker": self.worker_id}
        row = {"k": key, "at": at, "from_state": from_state, "to_state": to_state}
        tx.run(sql.LOG_EVENT, {**row, "detail": dumps(detail)})

    @staticmethod
    def _first_send(tx: sql.Tx, key: str) -> bool:
        """Whether the latest ``submitting`` was the first create with the current key."""
        row = tx.one(sql.LAST_SUBMITTING, {"k": key})
        return row is None or bool(json.loads(row["detail"]).get("first_send", True))

    @staticmethod
    def _record(
        tx: sql.Tx, row: Mapping[str, Any], outputs: list[OutputRecord] | None = None
    ) -> JobRecord:
        """The job row as a JobRecord; its outputs read unless the caller has them."""
        if outputs is None:
            outputs = outputs_sql.records(tx, row["key"])
        return job_record(row, outputs)

    def _get(self, tx: sql.Tx, key: str) -> JobRecord:
        """The job as a JobRecord with its outputs; LedgerConflict if there is none."""
        row = tx.one(sql.JOB, {"k": key})
        if row is None:
            raise LedgerConflict(f"job {key}: no such job in the ledger", key=key)
        return self._record(tx, row)

    @staticmethod
    def _set(tx: sql.Tx, key: str, **values: Any) -> None:
        """Change columns of a job without a state change."""
        params = {f"set_{name}": value for name, value in values.items()}
        tx.run(sql.set_statement(tuple(values)), {**params, "k": key})

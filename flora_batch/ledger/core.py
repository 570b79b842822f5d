"""Transactions and the guarded state change that every ``Ledger`` transition is built on.

``LedgerCore`` holds the engine and offers:

* ``_write()`` / ``_read()``: one short SQLAlchemy transaction (SQLite writes take ``BEGIN
  IMMEDIATE``), with driver errors turned into ``LedgerError`` / ``LedgerConflict``;
* ``_tx()``: the same on the driver's own cursor (a :class:`~.tx.Tx`), for the job
  transitions, which run several times per job (see ``tx.py`` for why);
* ``_row()``: the job's row (``FOR UPDATE`` on PostgreSQL), refusing a job that another
  worker holds (LeaseLost: the cluster's fence);
* ``_guarded()``: ``UPDATE jobs ... WHERE key = :k AND state IN (:sources) RETURNING ...``
  (the record's columns, and whether the job has outputs: a job without any is not
  looked up again) plus one ``events`` row; if no row matched, LedgerConflict names
  expected and actual states, or the run a ``no_run`` move met (LeaseLost names the
  holder).

Statements per job on its way to ``done`` (``bench/ledger_micro.py``): 20, in four write
transactions and one read of one statement (``get``).

**Grouped commits** (``group_commits``, SQLite files only; the worker turns them on for a
batch): a write transition runs inside a SAVEPOINT of one transaction that stays open on
the kept connection for a short window (``schedule``: ``loop.call_later``), then one
durable COMMIT (``synchronous=FULL``) covers every transition made meanwhile.  A commit
costs more CPU than the statements it commits (the WAL pages, the locks, the fsync), so
the transitions of the many runs a worker drives at once share it.  A ``mark_submitting``
that joins the group (``grouped=True``) is durable only at that commit: its caller waits
for it (``on_commit``) before the paid create leaves.  Losing an uncommitted group
(SIGKILL) is the same as being killed just before those transitions: each is safe to redo
(docs/design.md, "Durability of the ledger").
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from .records import RECORD_COLUMNS, conflict_message, dumps, job_record, record_of

_BEGIN_WRITE = "BEGIN IMMEDIATE"
_BEGIN_READ = "BEGIN"
_SAVEPOINT = "SAVEPOINT flora_move"
_RELEASE = "RELEASE flora_move"
_ROLLBACK_TO = "ROLLBACK TO flora_move"
#: ``group_commits``' way to run the commit later: ``loop.call_later``.
Schedule = Callable[[float, Callable[[], None]], object]
#: Told of the group's commit: None once it is on disk, else why it failed.
CommitWaiter = Callable[[LedgerError | None], None]
#: Where a transition's RETURNING row says whether the job has outputs (``tx.py``).
HAS_OUTPUTS = len(RECORD_COLUMNS)


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
        self._kept_cursor: Any = None
        self._kept_busy = False
        self._dialect = engine.dialect
        self._lock: lock.RunnerLock | None = None
        self._closed = False
        self._schedule: Schedule | None = None  # set: commits are grouped (``group_commits``)
        self._group_open = False  # a grouped transaction is open on the kept connection
        self._group_error: LedgerError | None = None  # a grouped commit that failed
        self._window = 0.0  # seconds a group stays open
        self._waiters: list[CommitWaiter] = []  # told when the open group is committed
        #: The database URL, any password masked.
        self.url = engine.url.render_as_string(hide_password=True)
        #: Set by ``flora-batch worker`` (``cluster.py``): then a job changes only while this
        #: worker holds its lease (LeaseLost otherwise), and every event names the worker.
        self.worker_id: str | None = None

    def close(self) -> None:
        """Commit a group still open, release the runner lock and every connection; the
        ledger cannot be used after."""
        try:
            self.group_commits(None)
        finally:
            self._close()

    def _close(self) -> None:
        self.release_runner_lock()
        self._closed = True
        if self._kept is not None:
            kept, self._kept, self._kept_cursor = self._kept, None, None
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

    # -- grouped commits ------------------------------------------------------------------

    def group_commits(self, schedule: Schedule | None, window: float = 0.02) -> None:
        """Group the commits of write transitions (SQLite files); None commits and stops.

        Args:
            schedule: ``loop.call_later``: called with ``window`` and a callback that
                commits the group, when one opens.  Write transitions made until then
                share that commit; reads see them.
            window: how long a group stays open, in seconds.
        """
        if schedule is None:
            self._schedule = None
            self.flush()
        elif self._sqlite_path is not None:
            self._schedule, self._window = schedule, window

    def on_commit(self, waiter: CommitWaiter) -> None:
        """Call ``waiter`` once the open group is durably committed (at once if none is)."""
        if self._group_open:
            self._waiters.append(waiter)
        else:
            waiter(self._group_error)

    def flush(self) -> None:
        """Commit the open group, if any, durably.

        Raises:
            LedgerError: the commit failed; the group's transitions are lost (as in a
                crash just before them), and so is every later use of this ledger.
        """
        if self._group_error is not None:
            raise self._group_error
        if not self._group_open or self._kept_busy or threading.get_ident() != self._owner:
            return  # nothing open; or in the middle of a transition, or another thread's
        self._group_open = False
        kept, waiters, self._waiters = self._kept, self._waiters, []
        try:
            kept.driver_connection.commit()
        except self._dbapi.Error as exc:
            self._rollback(kept)
            self._group_error = self._translated(exc, "")
        finally:
            with contextlib.suppress(self._dbapi.Error):
                self._kept_cursor.execute(connect.SYNC_NORMAL)
        for waiter in waiters:
            waiter(self._group_error)
        if self._group_error is not None:
            raise self._group_error

    def _flush_later(self) -> None:
        """``flush`` from the event loop: a failure is kept and raised at the next use."""
        with contextlib.suppress(LedgerError):
            self.flush()

    def _grouped(self, write: bool) -> bool:
        """Whether this transaction joins the group: a write, or a read while one is open,
        on the kept connection (never nested, only in its thread)."""
        return (
            (write or self._group_open)
            and self._schedule is not None
            and not self._kept_busy
            and threading.get_ident() == self._owner
        )

    def _join_group(self) -> tuple[Any, Any]:
        """The kept connection and cursor, in the group's transaction (begun if needed)."""
        raw, cursor = self._checkout()
        if not self._group_open:
            try:
                cursor.execute(connect.SYNC_FULL)  # only outside a transaction
                cursor.execute(_BEGIN_WRITE)
            except BaseException:
                with contextlib.suppress(self._dbapi.Error):
                    cursor.execute(connect.SYNC_NORMAL)
                self._checkin(raw, cursor)
                raise
            self._group_open = True
            assert self._schedule is not None
            self._schedule(self._window, self._flush_later)
        return raw, cursor

    # -- transactions ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError(f"ledger {self.url} is closed")
        if self._group_error is not None:
            raise self._group_error

    @contextmanager
    def _write(self, key: str = "", *, durable: bool = False) -> Iterator[Connection]:
        """One write transaction; SQLite takes its write lock at ``BEGIN``.

        ``durable``: as ``_tx``'s (the pragma goes to the driver: SQLite refuses to change
        it inside a transaction, and SQLAlchemy would begin one first).
        """
        self._check_open()
        self.flush()  # another connection: it would wait for the group's lock
        with self._translate(key), self._writer.connect() as conn:
            driver: Any = conn.connection.driver_connection if durable and self._sqlite else None
            if driver is not None:
                driver.execute(connect.SYNC_FULL)
            try:
                with conn.begin():
                    yield conn
            finally:
                if driver is not None:  # failing here only leaves the connection more careful
                    with contextlib.suppress(self._dbapi.Error):
                        driver.execute(connect.SYNC_NORMAL)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """One read transaction."""
        self._check_open()
        self.flush()  # another connection: it would not see the group's changes
        with self._translate(""), self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _tx(
        self,
        key: str = "",
        *,
        write: bool = True,
        durable: bool = False,
        single: bool = False,
        grouped: bool = False,
    ) -> Iterator[sql.Tx]:
        """One transaction on the driver's cursor; SQLite writes take the lock at ``BEGIN``.

        ``durable``: on SQLite this one commit runs with ``synchronous=FULL`` (the WAL is
        fsynced before the commit returns) instead of the connection's ``NORMAL``; see
        ``docs/design.md`` ("Durability of the ledger").  PostgreSQL commits are always
        durable (``synchronous_commit`` is on by default).

        ``grouped``: a durable write may join the open group of commits (see the module's
        docstring): the caller then waits for ``on_commit`` before acting on it.

        One generator, not three nested context managers: this runs five times per job,
        and each layer cost as much CPU as a SQLite statement.
        """
        self._check_open()
        durable = durable and self._sqlite
        if (grouped or not durable) and self._schedule is not None and self._grouped(write):
            yield from self._in_group(key, write)
            return
        self.flush()  # a durable commit covers what came before it; another connection waits
        try:
            raw, cursor = self._checkout()
            try:
                if durable:
                    cursor.execute(connect.SYNC_FULL)
                if self._sqlite and not single:  # psycopg begins by itself
                    cursor.execute(_BEGIN_WRITE if write else _BEGIN_READ)
                yield sql.Tx(cursor, self._dialect)
                cursor.connection.commit()
            except BaseException:
                self._rollback(raw)
                raise
            finally:
                if durable:  # failing here only leaves the connection more careful
                    with contextlib.suppress(self._dbapi.Error):
                        cursor.execute(connect.SYNC_NORMAL)
                self._checkin(raw, cursor)
        except (DBAPIError, self._dbapi.Error) as exc:
            raise self._translated(exc, key) from exc

    def _in_group(self, key: str, write: bool) -> Iterator[sql.Tx]:
        """``_tx``'s body in the group: a write in its own SAVEPOINT (undone alone if it fails)."""
        try:
            raw, cursor = self._join_group()
            try:
                if write:
                    cursor.execute(_SAVEPOINT)
                try:
                    yield sql.Tx(cursor, self._dialect)
                except BaseException:
                    if write:
                        self._undo(raw, cursor)
                    raise
                if write:
                    cursor.execute(_RELEASE)
            finally:
                self._checkin(raw, cursor)
        except (DBAPIError, self._dbapi.Error) as exc:
            raise self._translated(exc, key) from exc

    def _undo(self, raw: Any, cursor: Any) -> None:
        """Undo one failed transition of the group; if even that fails (the database gave
        up the whole transaction: disk full ...), the group is lost and so is the ledger."""
        try:
            cursor.execute(_ROLLBACK_TO)
            cursor.execute(_RELEASE)
        except self._dbapi.Error as exc:
            self._group_open = False
            self._rollback(raw)
            self._group_error = self._translated(exc, "")
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter(self._group_error)

    def _checkout(self) -> tuple[Any, Any]:
        """A DBAPI connection from the pool, and a cursor; on a SQLite file, the kept ones.

        A checkout and checkin through SQLAlchemy's pool cost ~15 µs of CPU, per
        transaction, several times per job.  Only on a SQLite file, only in the thread
        that opened the ledger and never nested: a PostgreSQL connection kept idle could
        die unseen (the pool pings it at each checkout instead), and in-memory SQLite has
        one connection anyway.
        """
        if self._sqlite_path is None or self._kept_busy or threading.get_ident() != self._owner:
            raw = self._engine.raw_connection()
            try:
                return raw, self._cursor(raw)
            except BaseException:
                raw.close()
                raise
        if self._kept is None:
            kept = self._engine.raw_connection()
            self._kept_cursor = self._cursor(kept)
            self._kept = kept
        self._kept_busy = True
        return self._kept, self._kept_cursor

    @staticmethod
    def _cursor(raw: Any) -> Any:
        return raw.driver_connection.cursor()

    def _checkin(self, raw: Any, cursor: Any) -> None:
        """Give back what :meth:`_checkout` gave; an invalidated kept connection is dropped."""
        if raw is self._kept:
            self._kept_busy = False
            if raw.is_valid:
                return
            self._kept = self._kept_cursor = None
        with contextlib.suppress(self._dbapi.Error):
            cursor.close()
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
        except (DBAPIError, self._dbapi.Error) as exc:
            raise self._translated(exc, key) from exc

    def _translated(self, exc: Exception, key: str) -> LedgerError:
        """A driver's error (raw, or wrapped by SQLAlchemy) as the ledger's."""
        if isinstance(exc, DBAPIError):
            cause: Any = exc.orig
            conflict = isinstance(exc, IntegrityError)
        else:
            cause, conflict = exc, isinstance(exc, self._dbapi.IntegrityError)
        if conflict:
            return LedgerConflict(f"ledger {self.url}: {cause}", key=key)
        return LedgerError(f"ledger {self.url}: {cause}")

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
        """LedgerConflict unless the row allows ``move``: its state, and no run if ``no_run``."""
        run_id = row["run_id"] if move.no_run else None
        if not move.allows(row["state"]) or run_id is not None:
            message = conflict_message(row["key"], move.action, row["state"], move.sources, run_id)
            raise LedgerConflict(message, key=row["key"])

    def _save_file(
        self, tx: sql.Tx, move: Move, key: str, output_id: str, file: Mapping[str, Any]
    ) -> tuple[dict[str, Any], OutputRecord | None]:
        """Set an output's file columns if the job is downloading: the job's row, and the
        output if it is the job's only one (``outputs_sql.set_file``)."""
        row = self._row(tx, key, move.action)
        self._check(row, move)
        return row, outputs_sql.set_file(tx, key, output_id, file)

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
    ) -> Sequence[Any]:
        """The guarded UPDATE and its event, in ``tx``; the row ``move_statement`` returns.

        ``from_state`` (for the event) is needed only when ``move`` has several sources:
        RETURNING gives the new row, and with one source the old state is known anyway.
        """
        params = {f"set_{name}": value for name, value in values.items()}
        params["k"], params["now"], params["w"] = key, now, self.worker_id
        stmt = sql.move_statement(move, tuple(values), leased=self.worker_id is not None)
        row = tx.first(stmt, params)
        if row is None:
            self._refuse(tx, key, move)
        if from_state is None:
            assert len(move.sources) == 1, f"{move.action}: which state did it leave?"
            from_state = move.sources[0]._value_  # Enum.value is a slow descriptor
        self._log(tx, key, now, from_state, move.target._value_, {"action": move.action, **detail})
        return row

    def _refuse(self, tx: sql.Tx, key: str, move: Move) -> NoReturn:
        """Why the guarded UPDATE matched no row: no job, another worker's, or its state."""
        row = tx.one(sql.JOB_STATE, {"k": key})
        if row is None:
            raise LedgerConflict(conflict_message(key, move.action, None, ()), key=key)
        self._fence(row, key, move.action)
        self._check({**row, "key": key}, move)
        # Only another transaction's change between the UPDATE and this read gets here.
        message = conflict_message(key, move.action, row["state"], move.sources)
        raise LedgerConflict(message, key=key)

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
        params = {"k": key, "at": at, "from_state": from_state, "to_state": to_state}
        params["detail"] = dumps(detail)
        tx.run(sql.LOG_EVENT, params)

    @staticmethod
    def _first_send(tx: sql.Tx, key: str) -> bool:
        """Whether the latest ``submitting`` was the first create with the current key."""
        row = tx.first(sql.LAST_SUBMITTING, {"k": key})
        return row is None or bool(json.loads(row[0]).get("first_send", True))

    @staticmethod
    def _record(
        tx: sql.Tx, row: Sequence[Any], outputs: Sequence[OutputRecord] | None = None
    ) -> JobRecord:
        """A transition's RETURNING row as a JobRecord; its outputs read unless known.

        They are known when the caller has them, or when the row says there are none.
        """
        if outputs is None:
            outputs = outputs_sql.records(tx, row[0]) if row[HAS_OUTPUTS] else ()
        return job_record(row, outputs)

    @staticmethod
    def _record_of(tx: sql.Tx, row: Mapping[str, Any]) -> JobRecord:
        """A whole ``jobs`` row (``_row``'s) as a JobRecord, its outputs read."""
        return record_of(row, outputs_sql.records(tx, row["key"]))

    def _get(self, tx: sql.Tx, key: str) -> JobRecord:
        """The job as a JobRecord with its outputs (one statement); LedgerConflict if none."""
        rows = tx.rows(sql.JOB_RECORD, {"k": key})
        if not rows:
            raise LedgerConflict(f"job {key}: no such job in the ledger", key=key)
        width = len(RECORD_COLUMNS)
        found = [OutputRecord(*r[width:]) for r in rows if r[width] is not None]
        return job_record(rows[0], found)

    @staticmethod
    def _set(tx: sql.Tx, key: str, **values: Any) -> Sequence[Any]:
        """Change columns of a job without a state change; its row as ``_guarded``'s."""
        params = {f"set_{name}": value for name, value in values.items()}
        row = tx.first(sql.set_statement(tuple(values)), {**params, "k": key})
        if row is None:  # callers have locked the row: only a bug gets here
            raise LedgerConflict(f"job {key}: no such job in the ledger", key=key)
        return row

"""Connections and transactions of a ledger: ``Session``, the base of ``LedgerCore``.

* ``_write()`` / ``_read()``: one short SQLAlchemy transaction (SQLite writes take ``BEGIN
  IMMEDIATE``), with driver errors turned into ``LedgerError`` / ``LedgerConflict``;
* ``_tx()``: the same on the driver's own cursor (a :class:`~.tx.Tx`), for the job
  transitions, which run several times per job (see ``tx.py`` for why); on a SQLite file
  it keeps one connection and cursor checked out for the thread that opened the ledger.

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
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from ..errors import LedgerConflict, LedgerError
from . import connect
from . import tx as sql

_BEGIN_WRITE = "BEGIN IMMEDIATE"
_BEGIN_READ = "BEGIN"
_SAVEPOINT = "SAVEPOINT flora_move"
_RELEASE = "RELEASE flora_move"
_ROLLBACK_TO = "ROLLBACK TO flora_move"
#: ``group_commits``' way to run the commit later: ``loop.call_later``.
Schedule = Callable[[float, Callable[[], None]], object]
#: Told of the group's commit: None once it is on disk, else why it failed.
CommitWaiter = Callable[[LedgerError | None], None]


class Session:
    """The engine, the kept SQLite connection, transactions and grouped commits."""

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
        self._closed = False
        self._schedule: Schedule | None = None  # set: commits are grouped (``group_commits``)
        self._group_open = False  # a grouped transaction is open on the kept connection
        self._group_error: LedgerError | None = None  # a grouped commit that failed
        self._window = 0.0  # seconds a group stays open
        self._waiters: list[CommitWaiter] = []  # told when the open group is committed
        #: The database URL, any password masked.
        self.url = engine.url.render_as_string(hide_password=True)

    def _close_connections(self) -> None:
        """Close the kept connection and the engine's pool; the session is unusable after."""
        self._closed = True
        if self._kept is not None:
            kept, self._kept, self._kept_cursor = self._kept, None, None
            kept.close()
        self._engine.dispose()

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

    def abandon_group(self) -> None:
        """Stop grouping and roll the open group back, uncommitted: its transitions are
        lost, as when the process is killed (the worker calls this when it is cancelled,
        so in-process crash tests see what a real crash loses)."""
        self._schedule = None
        if not self._group_open or self._kept_busy or threading.get_ident() != self._owner:
            return
        self._group_open = False
        self._waiters = []
        self._rollback(self._kept)
        with contextlib.suppress(self._dbapi.Error):
            self._kept_cursor.execute(connect.SYNC_NORMAL)

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

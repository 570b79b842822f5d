"""The runner lock: at most one live flora-batch run per ledger.

Both kinds are released by the operating system or the server when the holding process
dies, even by SIGKILL, so a crash never leaves a stale lock behind:

* SQLite file: ``fcntl.flock(LOCK_EX | LOCK_NB)`` on a sidecar ``<db>.lock`` kept open.
  The holder's pid is written into it, for the error message only.
* PostgreSQL: ``pg_try_advisory_lock`` on a dedicated connection kept open; the lock id
  is a hash of the database, the schema and the lock name.
* In-memory SQLite: no other process can see the database, so there is nothing to lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, Engine, text

from ..errors import LedgerBusy, LedgerError

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class RunnerLock(Protocol):
    """A lock held until :meth:`release` or the end of the process."""

    def release(self) -> None:
        """Let go of the lock; safe to call twice."""


class _NoLock:
    def release(self) -> None:
        """Nothing to release."""


class FileLock:
    """``flock`` on a sidecar file, held while the file descriptor stays open."""

    def __init__(self, path: Path, where: str) -> None:
        self.path = path
        try:  # O_NOFOLLOW: a planted symlink must not make us truncate someone's file
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise LedgerError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise LedgerBusy(
                f"another flora-batch run{holder} holds {where} (lock file {path}); "
                "wait for it to finish or stop it"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise LedgerError(f"cannot lock {path}: {exc}") from exc
        self._fd: int | None = fd
        with contextlib.suppress(OSError):  # the pid is for messages only (a full disk)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        """Unlock and close the sidecar file (the file itself stays, harmlessly)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


class AdvisoryLock:
    """A PostgreSQL session advisory lock on a connection of its own.

    ``shared=True`` takes the lock in shared mode: many holders at once (cluster workers),
    but never beside an exclusive holder (a ``run``), and the other way round.
    """

    def __init__(self, engine: Engine, name: str, busy: str, *, shared: bool = False) -> None:
        self._mode = "_shared" if shared else ""
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            self.lock_id = _lock_id(conn, name)
            query = text(f"SELECT pg_try_advisory_lock{self._mode}(:k)")
            if not conn.execute(query, {"k": self.lock_id}).scalar_one():
                raise LedgerBusy(busy)
        except BaseException:
            conn.close()
            raise
        self._conn: Connection | None = conn

    def release(self) -> None:
        """Unlock, then close the dedicated connection."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                query = text(f"SELECT pg_advisory_unlock{self._mode}(:k)")
                conn.execute(query, {"k": self.lock_id})
            finally:
                conn.close()


def _lock_id(conn: Connection, name: str) -> int:
    where = conn.execute(text("SELECT current_database() || '/' || current_schema()")).scalar_one()
    digest = hashlib.blake2b(f"flora-batch:{where}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def acquire(engine: Engine, sqlite_path: Path | None, name: str, where: str) -> RunnerLock:
    """Take the runner lock called ``name`` for this ledger, or raise LedgerBusy at once."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"lock name must match {_NAME.pattern}: {name!r}")
    if engine.dialect.name == "postgresql":
        busy = (
            f"another flora-batch run holds {where} (advisory lock {name!r}); "
            "wait for it to finish or stop it"
        )
        return AdvisoryLock(engine, name, busy)
    if sqlite_path is None:
        return _NoLock()
    suffix = ".lock" if name == "runner" else f".{name}.lock"
    return FileLock(sqlite_path.with_name(sqlite_path.name + suffix), where)

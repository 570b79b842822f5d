"""Turn what the user typed into a SQLAlchemy engine set up the way the ledger needs.

* A plain path (or ``sqlite:///path``) is a SQLite file; its parent folder is created.
  Every connection runs ``journal_mode=WAL``, ``synchronous=NORMAL``,
  ``busy_timeout=5000`` and ``foreign_keys=ON``; the commit that must survive a power
  loss before a paid create leaves (``mark_submitting``) runs with ``synchronous=FULL``
  (``SYNC_FULL``; docs/design.md, "Durability of the ledger").  pysqlite's own
  transaction handling is switched off so that ``BEGIN`` is ours: writes use ``BEGIN
  IMMEDIATE`` (the write lock is taken up front, so ``busy_timeout`` applies instead of
  a deadlock on upgrade).
* ``:memory:`` (or ``sqlite://``) is a private in-memory database on one connection.
* ``postgresql://`` and ``postgres://`` are rewritten to ``postgresql+psycopg://``
  (any PostgreSQL URL uses psycopg 3), without server-side prepared statements.

Before SQLite opens an existing file, :func:`inspect_sqlite_file` reads it read-only,
so a file that is not a ledger, or one written by a newer flora-batch, is left as it was.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from ..errors import LedgerError
from .tables import VERSION_TABLE

SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)
#: Around a commit that must be on disk when it returns (WAL: fsync of the log), and back.
SYNC_FULL = "PRAGMA synchronous=FULL"
SYNC_NORMAL = "PRAGMA synchronous=NORMAL"
#: Execution option read by the ``begin`` hook: ``"IMMEDIATE"`` for write transactions.
BEGIN_MODE = "flora_sqlite_begin"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a ledger lives: the SQLAlchemy URL, and the file for SQLite files."""

    url: URL
    sqlite_path: Path | None = None  # None for PostgreSQL and in-memory SQLite

    @property
    def is_sqlite(self) -> bool:
        """Whether the ledger is a SQLite database (file or memory)."""
        return self.url.get_backend_name() == "sqlite"

    @property
    def display(self) -> str:
        """The URL with any password masked."""
        return self.url.render_as_string(hide_password=True)


def resolve(url_or_path: str | Path) -> Target:
    """Parse a path or URL into a :class:`Target`.

    Raises:
        LedgerError: the URL names a database other than SQLite or PostgreSQL.
    """
    if isinstance(url_or_path, Path) or "://" not in url_or_path:
        if str(url_or_path) == ":memory:":
            return Target(make_url("sqlite://"))
        path = Path(url_or_path).expanduser().absolute()
        return Target(URL.create("sqlite", database=str(path)), path)
    url = make_url(url_or_path)
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return Target(url.set(drivername="postgresql+psycopg"))
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            return Target(make_url("sqlite://"))
        return resolve(Path(url.database))
    raise LedgerError(
        f"unsupported ledger database {backend!r}: use a SQLite path or postgresql://"
    )


def create(target: Target) -> Engine:
    """An engine for ``target``; for SQLite, with the pragmas and ``BEGIN`` hooks installed."""
    if not target.is_sqlite:
        # No server-side prepared statements: psycopg prepares a query after 5 runs, and
        # PostgreSQL may then keep a generic plan made while ``jobs`` was empty (measured:
        # key lookups 250x slower once the table held 100,000 rows).
        return create_engine(
            target.url, pool_pre_ping=True, connect_args={"prepare_threshold": None}
        )
    check_sqlite_version()
    if target.sqlite_path is None:
        engine = create_engine(
            target.url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        target.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(target.url, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


#: Every transition is one ``UPDATE … RETURNING`` (ledger/tx.py): SQLite 3.35 (2021) or later.
MIN_SQLITE = (3, 35, 0)


def check_sqlite_version(found: tuple[int, int, int] = sqlite3.sqlite_version_info) -> None:
    """LedgerError, before any file is made, if Python's SQLite is too old for the ledger."""
    if found < MIN_SQLITE:
        need, have = ".".join(map(str, MIN_SQLITE)), ".".join(map(str, found))
        raise LedgerError(
            f"this Python's SQLite is {have}; the ledger needs {need} or later (RETURNING): "
            "use a newer Python build, or a PostgreSQL ledger (--ledger postgresql://...)"
        )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # isolation_level=None: pysqlite stops issuing its own BEGINs; _sqlite_on_begin does.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    mode = connection.get_execution_options().get(BEGIN_MODE, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


@dataclass(frozen=True, slots=True)
class FileState:
    """What a read-only look at an existing SQLite file found."""

    tables: frozenset[str]
    revisions: frozenset[str]


def inspect_sqlite_file(path: Path) -> FileState | None:
    """Look at an existing SQLite file without changing it; ``None`` if it is absent or empty.

    Raises:
        LedgerError: the file is not a SQLite database, or SQLite cannot read it.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc}") from exc
    if not head:
        return None
    if head != SQLITE_MAGIC:
        raise LedgerError(f"{path} is not a flora-batch ledger (not a SQLite database)")
    try:
        return _read_only_state(path)
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path} is not a usable flora-batch ledger ({exc})") from exc


def _read_only_state(path: Path) -> FileState:
    # Without a -wal file nobody has the database open and the main file is complete:
    # read it as immutable, so SQLite creates no -wal/-shm files beside it.  With one,
    # a plain read-only connection sees what the WAL holds and creates nothing new.
    has_wal = path.with_name(path.name + "-wal").exists()
    uri = f"{path.as_uri()}?mode=ro" + ("" if has_wal else "&immutable=1")
    conn = sqlite3.connect(uri, uri=True)
    try:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        revisions: set[str] = set()
        if VERSION_TABLE in names:
            revisions = {r[0] for r in conn.execute(f"SELECT version_num FROM {VERSION_TABLE}")}
        return FileState(frozenset(names - {VERSION_TABLE}), frozenset(revisions))
    finally:
        conn.close()

"""The job transitions' SQL, compiled once, run on the driver's own cursor.

Why not ``Connection.execute``: SQLAlchemy Core costs ~40 µs of CPU per statement on
these machines (statement building, cache-key generation, the execution context, result
wrapping) against ~5 µs for sqlite3 itself, and a job takes ~15 statements on its way
to ``done``: the ledger was half of flora-batch's CPU (docs/performance.md, scenario 1).

So each statement here is still built with SQLAlchemy Core from ``tables.py`` and
compiled by SQLAlchemy for the engine's dialect (quoting, parameter style, ``FOR
UPDATE`` on PostgreSQL only); that happens once per statement and dialect
(:class:`Stmt`).  Only the execution skips SQLAlchemy: :class:`Tx` hands the SQL text
and the parameters to the DBAPI cursor of the transaction ``LedgerCore._tx`` opened.
Parameters must be what both drivers take as they are (str, int, float, None): no type
processing happens here, and none is needed for the ledger's column types.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BindParameter,
    Dialect,
    Table,
    bindparam,
    false,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.expression import Executable

from .moves import Move
from .records import OUTPUT_COLUMNS, RECORD_COLUMNS
from .tables import events, jobs, outputs

Build = Callable[[], Executable]


@dataclass(frozen=True, slots=True)
class Compiled:
    """One statement as the driver takes it."""

    sql: str
    order: tuple[str, ...] | None  # positional parameter names in order; None: named style
    fixed: Mapping[str, Any]  # values the statement carries itself (e.g. state constants)
    columns: tuple[str, ...]  # result column names (SELECT / RETURNING)


class Stmt:
    """A statement built by SQLAlchemy Core, compiled on first use for each dialect."""

    __slots__ = ("_build", "_compiled")

    def __init__(self, build: Build) -> None:
        self._build = build
        self._compiled: dict[tuple[type, str], Compiled] = {}

    def compiled(self, dialect: Dialect) -> Compiled:
        """The SQL text and parameter layout for ``dialect``."""
        found = self._compiled.get((type(dialect), dialect.paramstyle))
        if found is None:
            found = self._compile(dialect)
            self._compiled[(type(dialect), dialect.paramstyle)] = found
        return found

    def _compile(self, dialect: Dialect) -> Compiled:
        construct = self._build()
        compiled = construct.compile(dialect=dialect)  # type: ignore[attr-defined]
        order = tuple(compiled.positiontup) if compiled.positional else None
        fixed = {k: v for k, v in compiled.params.items() if v is not None}
        exported = getattr(construct, "exported_columns", ())
        return Compiled(compiled.string, order, fixed, tuple(c.key for c in exported))


class Tx:
    """One open transaction's DBAPI cursor (``LedgerCore._tx`` begins and ends it)."""

    __slots__ = ("_cursor", "_dialect")

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self._cursor = cursor
        self._dialect = dialect

    def _execute(self, stmt: Stmt, params: Mapping[str, Any]) -> Compiled:
        c = stmt.compiled(self._dialect)
        if c.fixed:
            params = {**c.fixed, **params}
        self._cursor.execute(c.sql, params if c.order is None else [params[n] for n in c.order])
        return c

    def run(self, stmt: Stmt, params: Mapping[str, Any]) -> int:
        """Execute a statement without result rows; how many rows it changed."""
        self._execute(stmt, params)
        return int(self._cursor.rowcount)

    def all(self, stmt: Stmt, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every result row, as dicts by column name."""
        columns = self._execute(stmt, params).columns
        return [dict(zip(columns, row, strict=True)) for row in self._cursor.fetchall()]

    def tuples(self, stmt: Stmt, params: Mapping[str, Any]) -> Iterator[Sequence[Any]]:
        """The result rows as the driver's tuples, fetched while they are iterated.

        Iterate them before the next statement on this transaction (and before it ends).
        """
        self._execute(stmt, params)
        return iter(self._cursor)

    def one(self, stmt: Stmt, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first result row (all are fetched, so the statement completes), or None."""
        rows = self.all(stmt, params)
        return rows[0] if rows else None


_K: BindParameter[str] = bindparam("k")

#: The job's row, locked for the transaction (PostgreSQL; SQLite's BEGIN IMMEDIATE has
#: already locked the database).
LOCK_JOB = Stmt(lambda: select(jobs).where(jobs.c.key == _K).with_for_update())
JOB = Stmt(lambda: select(jobs).where(jobs.c.key == _K))
JOB_STATE = Stmt(lambda: select(jobs.c.state, jobs.c.worker_id).where(jobs.c.key == _K))
LOG_EVENT = Stmt(
    lambda: insert(events).values(
        job_key=_K,
        at=bindparam("at"),
        from_state=bindparam("from_state"),
        to_state=bindparam("to_state"),
        detail=bindparam("detail"),
    )
)
LAST_SUBMITTING = Stmt(
    lambda: (
        select(events.c.detail)
        .where(events.c.job_key == _K, events.c.to_state == literal("submitting"))
        .order_by(events.c.id.desc())
        .limit(1)
    )
)
DELETE_OUTPUTS = Stmt(lambda: outputs.delete().where(outputs.c.job_key == _K))
OUTPUTS = Stmt(lambda: select(outputs).where(outputs.c.job_key == _K).order_by(outputs.c.output_id))
INSERT_OUTPUT = Stmt(
    lambda: insert(outputs).values(
        job_key=_K, output_id=bindparam("o"), type=bindparam("type"), url=bindparam("url")
    )
)
SET_URL = Stmt(
    lambda: (
        update(outputs)
        .where(outputs.c.job_key == _K, outputs.c.output_id == bindparam("o"))
        .values(url=bindparam("url"), type=bindparam("type"))
    )
)

_MOVES: dict[tuple[Move, tuple[str, ...], bool], Stmt] = {}
_SETS: dict[tuple[str, tuple[str, ...]], Stmt] = {}


def move_statement(move: Move, names: tuple[str, ...], *, leased: bool) -> Stmt:
    """``UPDATE jobs SET state, updated_at, <names> WHERE <move's guard> RETURNING *``.

    The guard: ``key = :k AND state IN (<sources>)``, plus ``run_id IS NULL`` for the
    moves that must never touch a job with a run, plus ``worker_id = :w`` for a cluster
    worker's ledger.  New values are bound as ``set_<column>``; ``updated_at`` as ``now``.
    """
    stmt = _MOVES.get((move, names, leased))
    if stmt is None:
        stmt = _MOVES[(move, names, leased)] = Stmt(lambda: _move_sql(move, names, leased))
    return stmt


def _move_sql(move: Move, names: Sequence[str], leased: bool) -> Executable:
    c = jobs.c
    guard = [c.key == _K, c.state.in_([literal(s.value) for s in move.sources])]
    if move.no_run:
        guard.append(c.run_id.is_(None))
    if leased:
        guard.append(c.worker_id == bindparam("w"))
    values: dict[str, Any] = {n: bindparam(f"set_{n}") for n in names}
    values.update(state=literal(move.target.value), updated_at=bindparam("now"))
    return update(jobs).where(*guard).values(values).returning(*jobs.c)


def set_statement(names: tuple[str, ...]) -> Stmt:
    """``UPDATE jobs SET <names> WHERE key = :k`` (values bound as ``set_<column>``)."""
    stmt = _SETS.get(("jobs", names))
    if stmt is None:
        stmt = _SETS[("jobs", names)] = Stmt(lambda: _set_sql(jobs, names))
    return stmt


def set_file_statement(names: tuple[str, ...]) -> Stmt:
    """``UPDATE outputs SET <names> WHERE job_key = :k AND output_id = :o``."""
    stmt = _SETS.get(("outputs", names))
    if stmt is None:
        stmt = _SETS[("outputs", names)] = Stmt(lambda: _set_sql(outputs, names))
    return stmt


def _set_sql(table: Table, names: Sequence[str]) -> Executable:
    values: dict[str, Any] = {n: bindparam(f"set_{n}") for n in names}
    if table is jobs:
        return update(jobs).where(jobs.c.key == _K).values(values)
    guard = (outputs.c.job_key == _K, outputs.c.output_id == bindparam("o"))
    return update(outputs).where(*guard).values(values)


# --- listing jobs (``Ledger.jobs``) ---------------------------------------------------

#: Whether the ledger holds a job of another batch than ``:batch``.
OTHER_BATCH = Stmt(
    lambda: select(jobs.c.key).where(jobs.c.batch != bindparam("batch")).limit(literal(1))
)


#: What planning needs of each job of ``:batch`` (``Ledger.known_slots``).
KNOWN_SLOTS = Stmt(
    lambda: select(
        jobs.c.key, jobs.c.state, jobs.c.technique, jobs.c.row_id, jobs.c.row_index
    ).where(jobs.c.batch == bindparam("batch"))
)


@functools.lru_cache(maxsize=64)
def jobs_statement(by_batch: bool, states: tuple[str, ...] | None) -> Stmt:
    """``RECORD_COLUMNS`` of the jobs (of ``:batch``, in ``states``), in listing order."""
    columns = [jobs.c[name] for name in RECORD_COLUMNS]
    order = (jobs.c.row_index, jobs.c.technique, jobs.c.key)
    return Stmt(lambda: select(*columns).where(*_job_filter(by_batch, states)).order_by(*order))


@functools.lru_cache(maxsize=64)
def outputs_statement(by_batch: bool, states: tuple[str, ...] | None, scoped: bool) -> Stmt:
    """``OUTPUT_COLUMNS`` of every output (``scoped``: of those jobs only), by job and id."""

    def build() -> Executable:
        query = select(*[outputs.c[name] for name in OUTPUT_COLUMNS])
        if scoped:
            keys = select(jobs.c.key).where(*_job_filter(by_batch, states))
            query = query.where(outputs.c.job_key.in_(keys))
        return query.order_by(outputs.c.job_key, outputs.c.output_id)

    return Stmt(build)


def _job_filter(by_batch: bool, states: tuple[str, ...] | None) -> list[ColumnElement[bool]]:
    """The states as literals: an expanding ``IN`` needs SQLAlchemy at execution."""
    where: list[ColumnElement[bool]] = []
    if by_batch:
        where.append(jobs.c.batch == bindparam("batch"))
    if states is not None:
        where.append(jobs.c.state.in_([literal(s) for s in states]) if states else false())
    return where

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
Parameters must be what both drivers take as they are (str, int, float, None; a list
for PostgreSQL's ``= ANY(:keys)``): no type processing happens here, and none is needed
for the ledger's column types.  Every statement uses named parameters (pysqlite's qmark
style is compiled as ``:name``, which it takes too), so a dict goes to the driver as it
is; state names are written into the SQL rather than bound.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    BindParameter,
    Dialect,
    String,
    Table,
    any_,
    bindparam,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.expression import Executable

from .moves import Move
from .records import OUTPUT_COLUMNS, RECORD_COLUMNS
from .tables import events, jobs, outputs, runs

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

    __slots__ = ("_build", "_compiled", "_last")

    def __init__(self, build: Build) -> None:
        self._build = build
        self._compiled: dict[tuple[type, str], Compiled] = {}
        self._last: tuple[Dialect, Compiled] | None = None  # the dialect seen last, its SQL

    def compiled(self, dialect: Dialect) -> Compiled:
        """The SQL text and parameter layout for ``dialect``."""
        last = self._last
        if last is not None and last[0] is dialect:  # one ledger per process, mostly
            return last[1]
        found = self._compiled.get((type(dialect), dialect.paramstyle))
        if found is None:
            found = self._compile(dialect)
            self._compiled[(type(dialect), dialect.paramstyle)] = found
        self._last = (dialect, found)
        return found

    def _compile(self, dialect: Dialect) -> Compiled:
        construct = self._build()
        if dialect.positional:  # pysqlite's qmark: it takes :name too, and a dict as it is
            dialect = copy.copy(dialect)
            dialect.paramstyle, dialect.positional = "named", False
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

    def rows(self, stmt: Stmt, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Every result row, as the driver's tuples (in the statement's column order)."""
        self._execute(stmt, params)
        rows: list[Sequence[Any]] = self._cursor.fetchall()
        return rows

    def first(self, stmt: Stmt, params: Mapping[str, Any]) -> Sequence[Any] | None:
        """The first result row as the driver's tuple (all are fetched), or None.

        Fetching them all makes the statement complete: an ``UPDATE ... RETURNING``
        has then changed every row it matched.
        """
        rows = self.rows(stmt, params)
        return rows[0] if rows else None

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


def _const(value: str) -> ColumnElement[str]:
    """A string constant written into the SQL (a state name): a bound one would be one
    more parameter to merge into every execution's."""
    return literal_column("'" + value.replace("'", "''") + "'", String)


#: The job's row, locked for the transaction (PostgreSQL; SQLite's BEGIN IMMEDIATE has
#: already locked the database).
LOCK_JOB = Stmt(lambda: select(jobs).where(jobs.c.key == _K).with_for_update())
#: The few columns the worker's own transitions read first (``LOCK_JOB``'s lock, a
#: third of its cost: a whole row is ~30 columns to convert).
HEAD_COLUMNS = (
    "key", "state", "run_id", "worker_id", "submitted_at", "idempotency_key", "request_ids",
    "technique", "lease_until",
)  # fmt: skip
LOCK_HEAD = Stmt(
    lambda: select(*[jobs.c[n] for n in HEAD_COLUMNS]).where(jobs.c.key == _K).with_for_update()
)
#: Whether the job ``:k`` has outputs: after the RECORD_COLUMNS of a transition's
#: RETURNING, so that a job without any (until ``downloading``) skips reading them.
_HAS_OUTPUTS = exists().where(outputs.c.job_key == _K).label("has_outputs")
#: The job's RECORD_COLUMNS, then the OUTPUT_COLUMNS (but ``job_key``) of each of its
#: outputs by id, one row each (one row of NULL outputs when it has none): ``Ledger.get``.
JOB_RECORD = Stmt(
    lambda: (
        select(*_record_columns(), *[outputs.c[n] for n in OUTPUT_COLUMNS[1:]])
        .select_from(jobs.outerjoin(outputs, outputs.c.job_key == jobs.c.key))
        .where(jobs.c.key == _K)
        .order_by(outputs.c.output_id)
    )
)
JOB_STATE = Stmt(
    lambda: select(jobs.c.state, jobs.c.worker_id, jobs.c.run_id).where(jobs.c.key == _K)
)
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
        .where(events.c.job_key == _K, events.c.to_state == _const("submitting"))
        .order_by(events.c.id.desc())
        .limit(1)
    )
)
#: The job a run id belongs to (``runs``), if the ledger has seen it.
RUN_OWNER = Stmt(lambda: select(runs.c.job_key).where(runs.c.run_id == bindparam("r")))
#: A run id seen for the first time, and the job it belongs to.
INSERT_RUN = Stmt(
    lambda: insert(runs).values(
        run_id=bindparam("r"),
        job_key=_K,
        idempotency_key=bindparam("ik"),
        technique=bindparam("t"),
        seen_at=bindparam("now"),
    )
)
DELETE_OUTPUTS = Stmt(lambda: outputs.delete().where(outputs.c.job_key == _K))
#: The job's outputs: their OUTPUT_COLUMNS but ``job_key``, by id.
OUTPUTS = Stmt(
    lambda: (
        select(*[outputs.c[n] for n in OUTPUT_COLUMNS[1:]])
        .where(outputs.c.job_key == _K)
        .order_by(outputs.c.output_id)
    )
)
INSERT_OUTPUT = Stmt(
    lambda: insert(outputs).values(
        job_key=_K, output_id=bindparam("o"), type=bindparam("type"), url=bindparam("url")
    )
)
#: An output with its saved file (``finish_run``).
INSERT_SAVED_OUTPUT = Stmt(
    lambda: insert(outputs).values(
        job_key=_K,
        output_id=bindparam("o"),
        type=bindparam("type"),
        url=bindparam("url"),
        path=bindparam("path"),
        size=bindparam("size"),
        sha256=bindparam("sha256"),
        content_type=bindparam("content_type"),
        saved_at=bindparam("saved_at"),
    )
)
SET_URL = Stmt(
    lambda: (
        update(outputs)
        .where(outputs.c.job_key == _K, outputs.c.output_id == bindparam("o"))
        .values(url=bindparam("url"), type=bindparam("type"))
    )
)

_MOVES: dict[tuple[str, tuple[str, ...], bool], Stmt] = {}
_SETS: dict[tuple[str, tuple[str, ...]], Stmt] = {}


def move_statement(move: Move, names: tuple[str, ...], *, leased: bool) -> Stmt:
    """``UPDATE jobs SET state, updated_at, <names> WHERE <move's guard> RETURNING ...``.

    It returns the job's ``RECORD_COLUMNS``, then whether it has outputs.

    The guard: ``key = :k AND state IN (<sources>)``, plus ``run_id IS NULL`` for the
    moves that must never touch a job with a run, plus ``worker_id = :w`` for a cluster
    worker's ledger.  New values are bound as ``set_<column>``; ``updated_at`` as ``now``.
    """
    stmt = _MOVES.get((move.action, names, leased))  # a str hashes faster than a Move
    if stmt is None:
        stmt = _MOVES[(move.action, names, leased)] = Stmt(lambda: _move_sql(move, names, leased))
    return stmt


def _move_sql(move: Move, names: Sequence[str], leased: bool) -> Executable:
    c = jobs.c
    guard = [c.key == _K, c.state.in_([_const(s.value) for s in move.sources])]
    if move.no_run:
        guard.append(c.run_id.is_(None))
    if move.has_run:
        guard.append(c.run_id.is_not(None))
    if leased:
        guard.append(c.worker_id == bindparam("w"))
    values: dict[str, Any] = {n: bindparam(f"set_{n}") for n in names}
    values.update(state=_const(move.target.value), updated_at=bindparam("now"))
    return update(jobs).where(*guard).values(values).returning(*_record_columns(), _HAS_OUTPUTS)


def _record_columns() -> list[ColumnElement[Any]]:
    return [jobs.c[name] for name in RECORD_COLUMNS]


def set_statement(names: tuple[str, ...]) -> Stmt:
    """``UPDATE jobs SET <names> WHERE key = :k RETURNING ...`` (as ``move_statement``).

    Values are bound as ``set_<column>``.
    """
    stmt = _SETS.get(("jobs", names))
    if stmt is None:
        stmt = _SETS[("jobs", names)] = Stmt(lambda: _set_sql(jobs, names))
    return stmt


def set_file_statement(names: tuple[str, ...]) -> Stmt:
    """``UPDATE outputs SET <names> WHERE job_key = :k AND output_id = :o RETURNING ...``.

    It returns the output's ``OUTPUT_COLUMNS``, then how many outputs the job has: with
    only this one, the caller knows them all without reading them again.
    """
    stmt = _SETS.get(("outputs", names))
    if stmt is None:
        stmt = _SETS[("outputs", names)] = Stmt(lambda: _set_sql(outputs, names))
    return stmt


def _set_sql(table: Table, names: Sequence[str]) -> Executable:
    values: dict[str, Any] = {n: bindparam(f"set_{n}") for n in names}
    if table is jobs:
        returned = (*_record_columns(), _HAS_OUTPUTS)
        return update(jobs).where(jobs.c.key == _K).values(values).returning(*returned)
    guard = (outputs.c.job_key == _K, outputs.c.output_id == bindparam("o"))
    others = outputs.alias("others")
    count = select(func.count()).where(others.c.job_key == _K).scalar_subquery()
    file = [outputs.c[name] for name in OUTPUT_COLUMNS]
    return update(outputs).where(*guard).values(values).returning(*file, count)


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


_KEYS = bindparam("keys", type_=ARRAY(String))
#: ``jobs_statement``'s columns and order, for the jobs whose key is in the list ``:keys``
#: (a PostgreSQL array: only ``leases.Leases`` uses it, on a PostgreSQL ledger).
JOBS_OF_KEYS = Stmt(
    lambda: (
        select(*_record_columns())
        .where(jobs.c.key == any_(_KEYS))
        .order_by(jobs.c.row_index, jobs.c.technique, jobs.c.key)
    )
)
#: ``outputs_statement``'s columns and order, for the jobs ``:keys`` (PostgreSQL).
OUTPUTS_OF_KEYS = Stmt(
    lambda: (
        select(*[outputs.c[name] for name in OUTPUT_COLUMNS])
        .where(outputs.c.job_key == any_(_KEYS))
        .order_by(outputs.c.job_key, outputs.c.output_id)
    )
)


def _job_filter(by_batch: bool, states: tuple[str, ...] | None) -> list[ColumnElement[bool]]:
    """The states as literals: an expanding ``IN`` needs SQLAlchemy at execution."""
    where: list[ColumnElement[bool]] = []
    if by_batch:
        where.append(jobs.c.batch == bindparam("batch"))
    if states is not None:
        where.append(jobs.c.state.in_([literal(s) for s in states]) if states else false())
    return where

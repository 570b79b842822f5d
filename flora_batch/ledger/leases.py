"""The shared ledger's side of `flora-batch worker`: batches, claims, leases and pacing.

``Leases(ledger)`` runs the SQL that lets many worker processes, on many machines, work
one PostgreSQL ledger without stepping on each other:

* ``publish`` stores what a worker needs to work a batch without its manifest (``batches``)
  and the batch's cluster-wide pacing row (``pacing``).
* ``claim`` hands a worker up to ``n`` jobs, in one transaction serialised per batch by
  ``pg_advisory_xact_lock`` and taking rows ``FOR UPDATE SKIP LOCKED``: first jobs whose
  run may exist and whose lease ran out (a dead worker's: they go through the same
  resume rules as after a crash), then ``planned`` jobs, only while the batch's in-flight
  count (jobs in ``submitting | running | downloading | needs_reconcile``, plus ``planned``
  jobs claimed under a live lease) stays under the pacing row's limit, the batch is not
  paused after a 429, and the quotes fit ``max_cost``.  Each claim is an ``events`` row
  naming the worker, the previous holder and its lease, and the in-flight count after it.
* ``renew`` extends every lease a worker holds (its heartbeat); ``hand_back`` clears them.
* ``reserve_submit``, ``rate_limited`` and ``succeeded`` change the pacing row in one
  statement each (the row lock orders them): a create waits for its reserved slot, a 429
  seen by one worker pauses and halves the limit for all, successes grow it back.

The fence itself is in ``core.LedgerCore._row``: a ledger with ``worker_id`` set refuses
to change a job that another worker holds (:class:`~flora_batch.errors.LeaseLost`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.sql import ColumnElement

from ..errors import LedgerError
from ..types import JobRecord, JobState
from . import lock
from . import tx as sql
from .queries import highest_bills_query, unbilled
from .records import dumps, grouped_outputs, job_records
from .store import Ledger
from .tables import batches, events, jobs, pacing

S = JobState
#: States whose run may exist and is not settled: counted in flight, reclaimed as they are.
HELD = (S.SUBMITTING, S.RUNNING, S.DOWNLOADING, S.NEEDS_RECONCILE)
_TERMINAL = [s.value for s in JobState if s.terminal]
_CLAIM_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || :k, 0))"


@dataclass(frozen=True, slots=True)
class BatchRow:
    """A submitted batch, as workers read it."""

    name: str
    results: str
    max_cost: float | None
    concurrency: int
    submit_rate: float
    techniques: str  # JSON text: {slug: technique schema}
    manifest: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Pacing:
    """A batch's pacing row."""

    in_flight_limit: int
    max_limit: int
    next_submit_at: float
    paused_until: float


def worker_lock(ledger: Ledger) -> lock.AdvisoryLock:
    """A shared hold on the ledger's runner lock: many workers, but never beside a `run`."""
    busy = f"a `flora-batch run` holds {ledger.url}: workers start once it has finished"
    return lock.AdvisoryLock(ledger._engine, "runner", busy, shared=True)


class Leases:
    """Claims, leases and pacing on a PostgreSQL ledger."""

    def __init__(self, ledger: Ledger) -> None:
        if ledger._engine.dialect.name != "postgresql":
            raise LedgerError(f"{ledger.url}: workers need a PostgreSQL ledger")
        self.ledger = ledger

    # -- batches -----------------------------------------------------------------------

    def publish(self, row: BatchRow, *, now: float) -> None:
        """Store (or update) a batch and reset its pacing row to the batch's limit."""
        values = {
            "results": row.results,
            "max_cost": row.max_cost,
            "concurrency": row.concurrency,
            "submit_rate": row.submit_rate,
            "techniques": row.techniques,
            "manifest": row.manifest,
            "updated_at": now,
        }
        pace = {"in_flight_limit": row.concurrency, "max_limit": row.concurrency, "streak": 0}
        with self.ledger._write() as conn:
            conn.execute(text(_CLAIM_LOCK), {"k": f"/flora-batch-claim/{row.name}"})
            where = batches.c.name == row.name
            if conn.execute(update(batches).where(where).values(**values)).rowcount == 0:
                conn.execute(insert(batches).values(name=row.name, created_at=now, **values))
            done = conn.execute(
                update(pacing).where(pacing.c.batch == row.name).values(**pace, updated_at=now)
            )
            if done.rowcount == 0:
                conn.execute(insert(pacing).values(batch=row.name, **pace, updated_at=now))

    def batch(self, name: str) -> BatchRow | None:
        """The submitted batch called ``name``, if any."""
        with self.ledger._read() as conn:
            row = conn.execute(select(batches).where(batches.c.name == name)).mappings().first()
        return None if row is None else _batch_row(row)

    def batches(self) -> list[BatchRow]:
        """Every submitted batch, oldest first."""
        query = select(batches).order_by(batches.c.created_at, batches.c.name)
        with self.ledger._read() as conn:
            return [_batch_row(r) for r in conn.execute(query).mappings()]

    def pacing(self, batch: str) -> Pacing | None:
        """The batch's pacing row."""
        query = select(pacing).where(pacing.c.batch == batch)
        with self.ledger._read() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        return Pacing(
            row["in_flight_limit"], row["max_limit"], row["next_submit_at"], row["paused_until"]
        )

    # -- claims and leases -------------------------------------------------------------

    def claim(
        self, batch: str, worker: str, n: int, *, now: float, lease: float
    ) -> list[JobRecord]:
        """Up to ``n`` jobs of ``batch`` for ``worker``, leased until ``now + lease``."""
        if n <= 0:
            return []
        with self.ledger._write() as conn:
            conn.execute(text(_CLAIM_LOCK), {"k": f"/flora-batch-claim/{batch}"})
            pace = (
                conn.execute(select(pacing).where(pacing.c.batch == batch).with_for_update())
                .mappings()
                .first()
            )
            if pace is None:
                return []
            taken = _free(conn, batch, [s.value for s in HELD], n, now)
            flying = _in_flight(conn, batch, now)
            room = min(n - len(taken), pace["in_flight_limit"] - flying)
            if room > 0 and pace["paused_until"] <= now:
                planned = _free(conn, batch, [S.PLANNED.value], room, now)
                planned = _affordable(conn, batch, planned, now)
                taken += planned
                flying += len(planned)
            if not taken:
                return []
            keys = [r["key"] for r in taken]
            until = now + lease
            conn.execute(
                update(jobs).where(jobs.c.key.in_(keys)).values(worker_id=worker, lease_until=until)
            )
            detail = {"action": "claim", "worker": worker, "lease_until": until}
            detail |= {"in_flight": flying, "limit": pace["in_flight_limit"]}
            conn.execute(
                insert(events),
                [_claim_event(r, now, detail) for r in taken],
            )
            return _records(conn, keys)

    def renew(self, worker: str, *, now: float, lease: float) -> int:
        """Extend every lease ``worker`` holds on an unfinished job; how many it holds."""
        mine = (
            select(jobs.c.key)
            .where(jobs.c.worker_id == worker, jobs.c.state.notin_(_TERMINAL))
            .order_by(jobs.c.key)
            .with_for_update()  # in key order, as hand_back: the two never deadlock
        )
        query = update(jobs).where(jobs.c.key.in_(mine)).values(lease_until=now + lease)
        with self.ledger._write() as conn:
            return int(conn.execute(query).rowcount)

    def hand_back(
        self,
        worker: str,
        *,
        now: float,
        keys: Iterable[str] | None = None,
        not_before: float | None = None,
    ) -> int:
        """Release ``worker``'s unfinished jobs (``keys`` only, if given) to any worker.

        ``not_before`` keeps them unclaimable until then (jobs that are stuck for now).
        """
        where = [jobs.c.worker_id == worker, jobs.c.state.notin_(_TERMINAL)]
        if keys is not None:
            where.append(jobs.c.key.in_(list(keys)))
        with self.ledger._write() as conn:
            rows = conn.execute(
                select(jobs.c.key, jobs.c.state)
                .where(*where)
                .order_by(jobs.c.key)
                .with_for_update()
            ).all()
            if not rows:
                return 0
            released = [r.key for r in rows]
            conn.execute(
                update(jobs)
                .where(jobs.c.key.in_(released))
                .values(worker_id=None, lease_until=not_before)
            )
            detail = dumps({"action": "hand_back", "worker": worker, "not_before": not_before})
            logs = [
                {"job_key": r.key, "at": now, "from_state": r.state, "detail": detail} for r in rows
            ]
            conn.execute(insert(events), logs)
            return len(released)

    def has_work(self, batch: str, *, now: float) -> bool:
        """Whether ``batch`` has jobs nobody holds: runs to resume, or planned jobs that fit
        ``max_cost`` (the in-flight cap or a 429 pause may still make them wait)."""
        with self.ledger._read() as conn:
            if _free(conn, batch, [s.value for s in HELD], 1, now, lock=False):
                return True
            planned = _free(conn, batch, [S.PLANNED.value], 1, now, lock=False)
            return bool(_affordable(conn, batch, planned, now))

    def in_flight(self, batch: str, *, now: float) -> int:
        """The batch's in-flight count, as claims see it."""
        with self.ledger._read() as conn:
            return _in_flight(conn, batch, now)

    # -- pacing ------------------------------------------------------------------------

    def reserve_submit(self, batch: str, *, now: float, interval: float) -> float:
        """The time this worker's next create may leave: after any pause, ``interval`` apart."""
        p = pacing.c
        slot = func.greatest(p.next_submit_at, p.paused_until, now)
        query = (
            update(pacing)
            .where(p.batch == batch)
            .values(next_submit_at=slot + interval)
            .returning(p.next_submit_at)
        )
        with self.ledger._write() as conn:
            after = conn.execute(query).scalar_one_or_none()
        return now if after is None else float(after) - interval

    def rate_limited(self, batch: str, worker: str, *, now: float, pause: float) -> Pacing | None:
        """A 429: pause every worker's creates and halve the limit (once per pause)."""
        p = pacing.c
        fresh = p.paused_until <= now
        query = (
            update(pacing)
            .where(p.batch == batch)
            .values(
                in_flight_limit=case(
                    (fresh, func.greatest(1, p.in_flight_limit // 2)), else_=p.in_flight_limit
                ),
                paused_until=func.greatest(p.paused_until, now + pause),
                streak=0,
                updated_at=now,
            )
            .returning(p.in_flight_limit, p.max_limit, p.next_submit_at, p.paused_until)
        )
        with self.ledger._write() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            detail = {"action": "rate_limited", "batch": batch, "worker": worker, "pause": pause}
            detail |= {"limit": row[0], "paused_until": row[3]}
            conn.execute(insert(events).values(job_key=None, at=now, detail=dumps(detail)))
        return Pacing(int(row[0]), int(row[1]), float(row[2]), float(row[3]))

    def succeeded(self, batch: str, *, now: float) -> None:
        """One more create accepted: after ``limit`` in a row, allow one more in flight."""
        p = pacing.c
        grow = and_(p.streak + 1 >= p.in_flight_limit, p.in_flight_limit < p.max_limit)
        query = (
            update(pacing)
            .where(p.batch == batch)
            .values(
                in_flight_limit=case((grow, p.in_flight_limit + 1), else_=p.in_flight_limit),
                streak=case((grow, literal(0)), else_=p.streak + 1),
                updated_at=now,
            )
        )
        with self.ledger._write() as conn:
            conn.execute(query)


# -- helpers (each runs in the caller's transaction) ----------------------------------------


def _lease_free(now: float) -> ColumnElement[bool]:
    return or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < now)


def _free(
    conn: Connection,
    batch: str,
    states: Sequence[str],
    limit: int,
    now: float,
    *,
    lock: bool = True,
) -> list[Any]:
    """Up to ``limit`` unleased jobs in ``states``, locked, skipping rows others have locked."""
    c = jobs.c
    query = (
        select(c.key, c.state, c.worker_id, c.lease_until, c.quoted_cost, c.technique)
        .where(c.batch == batch, c.state.in_(states), _lease_free(now))
        .order_by(c.row_index, c.technique, c.key)
        .limit(limit)
    )
    if lock:
        query = query.with_for_update(skip_locked=True)
    return [dict(r) for r in conn.execute(query).mappings()]


def _in_flight(conn: Connection, batch: str, now: float) -> int:
    c = jobs.c
    claimed = and_(c.state == S.PLANNED.value, c.worker_id.is_not(None), c.lease_until >= now)
    query = select(func.count()).where(
        c.batch == batch, or_(c.state.in_([s.value for s in HELD]), claimed)
    )
    return int(conn.execute(query).scalar_one())


def _affordable(conn: Connection, batch: str, planned: list[Any], now: float) -> list[Any]:
    """The planned jobs (in order) that fit the batch's ``max_cost``, as ``budget.Budget``
    judges it in one process: bills known, plus a hold on every run not billed yet (and on
    every planned job claimed under a live lease) at the larger of its quote and the
    highest bill seen for its technique; a technique with no known bill buys one run at
    a time."""
    cap = conn.execute(select(batches.c.max_cost).where(batches.c.name == batch)).scalar()
    if cap is None or not planned:
        return planned
    c = jobs.c
    highest = {t: float(b) for t, b in conn.execute(highest_bills_query())}
    bill = func.coalesce(c.charged_cost, 0) + c.charged_before
    spent = conn.execute(select(func.coalesce(func.sum(bill), 0)).where(c.batch == batch))
    total = float(spent.scalar_one())
    claimed = and_(c.state == S.PLANNED.value, c.worker_id.is_not(None), c.lease_until >= now)
    holding = or_(and_(unbilled(), c.charged_cost.is_(None)), claimed)
    held = conn.execute(
        select(c.technique, func.coalesce(c.quoted_cost, 0)).where(c.batch == batch, holding)
    ).all()
    busy = {t for t, _ in held}
    total += sum(max(float(q), highest.get(t, 0.0)) for t, q in held)
    fits = []
    for row in planned:
        technique = row["technique"]
        if technique not in highest and technique in busy:
            continue  # its bill is unknown: one run at a time until one is read
        total += max(row["quoted_cost"] or 0.0, highest.get(technique, 0.0))
        if total > cap + 1e-9:
            break
        fits.append(row)
        busy.add(technique)
    return fits


def _claim_event(row: Any, now: float, detail: dict[str, Any]) -> dict[str, Any]:
    before = {"previous": row["worker_id"], "previous_lease": row["lease_until"]}
    return {
        "job_key": row["key"],
        "at": now,
        "from_state": row["state"],
        "to_state": None,
        "detail": dumps({**detail, **before}),
    }


def _records(conn: Connection, keys: list[str]) -> list[JobRecord]:
    """The jobs ``keys`` as records, in listing order: ``Ledger.jobs``' path, on the driver's
    cursor within ``conn``'s transaction."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        tx = sql.Tx(cursor, conn.dialect)
        params = {"keys": keys}
        grouped = grouped_outputs(tx.tuples(sql.OUTPUTS_OF_KEYS, params))
        return job_records(tx.tuples(sql.JOBS_OF_KEYS, params), grouped)
    finally:
        cursor.close()


def _batch_row(row: Any) -> BatchRow:
    return BatchRow(
        name=row["name"],
        results=row["results"],
        max_cost=row["max_cost"],
        concurrency=row["concurrency"],
        submit_rate=row["submit_rate"],
        techniques=row["techniques"],
        manifest=row["manifest"],
        created_at=row["created_at"],
    )


__all__ = ["HELD", "BatchRow", "Leases", "Pacing", "worker_lock"]

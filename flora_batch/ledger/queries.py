"""The ledger's reports: durations, counts, money, the event log and batch settings.

``store.Ledger`` inherits these read-mostly queries (``set_meta`` is their one write):
each is one short SQLAlchemy transaction, off the per-job hot path of ``store.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import ColumnElement

from ..types import JobKey, JobState, SavedJob
from .records import RESERVING_STATES, event_dict
from .tables import events, meta, outputs, runs
from .tables import jobs as jobs_table
from .upload_store import UploadLedger


class LedgerQueries(UploadLedger):
    """The reporting half of ``store.Ledger``."""

    def durations(self, technique: str, limit: int = 64) -> list[float]:
        """Submit-to-done seconds of the latest done jobs of ``technique``, any batch.

        The poll policy's first guess for a technique before any of its runs completes
        here (``polling.Learned.learn_prior``): a nightly batch learns from last night's.
        """
        c = jobs_table.c
        took = c.completed_at - c.submitted_at
        query = (
            select(took)
            .where(c.technique == technique, c.state == JobState.DONE.value, took > 0)
            .order_by(c.completed_at.desc())
            .limit(limit)
        )
        with self._read() as conn:
            return [float(t) for t in conn.execute(query).scalars()]

    def saved_jobs(self, batch: str) -> list[SavedJob]:
        """The ``done`` jobs of ``batch`` with their run, bill and files, in key order."""
        j, o = jobs_table.c, outputs.c
        query = (
            select(j.key, j.run_id, j.charged_cost, o.output_id, o.path, o.size, o.sha256)
            .select_from(jobs_table.outerjoin(outputs, o.job_key == j.key))
            .where(j.batch == batch, j.state == JobState.DONE.value)
            .order_by(j.key, o.output_id)
        )
        found: list[SavedJob] = []
        with self._read() as conn:
            rows = conn.execute(query)
            files: list[tuple[str | None, int | None, str | None]] = []
            last: tuple[str, str | None, float | None] | None = None
            for key, run_id, charged, output_id, path, size, sha in rows:
                if last is None or key != last[0]:
                    if last is not None:
                        found.append(SavedJob(JobKey(last[0]), last[1], last[2], tuple(files)))
                    last, files = (key, run_id, charged), []
                if output_id is not None:  # None: a job done without any output
                    files.append((path, size, sha))
            if last is not None:
                found.append(SavedJob(JobKey(last[0]), last[1], last[2], tuple(files)))
        return found

    def occurrences(self, batch: str) -> dict[JobKey, int]:
        """``key -> occurrence`` of the jobs of ``batch`` whose occurrence is not 0: the
        identical jobs, numbered by row order or (-1) told apart by row id
        (``plan.keep_earlier_keys``)."""
        c = jobs_table.c
        query = select(c.key, c.occurrence).where(c.batch == batch, c.occurrence != 0)
        with self._read() as conn:
            return {JobKey(k): int(n) for k, n in conn.execute(query)}

    def output_ids(self, batch: str) -> dict[str, tuple[str, ...]]:
        """``technique -> output ids`` (distinct, in the database's order) that the runs of
        ``batch`` returned: the names a new job's files will get (``jobs.check_saved_names``)."""
        j, o = jobs_table.c, outputs.c
        query = (
            select(j.technique, o.output_id)
            .distinct()
            .select_from(jobs_table.join(outputs, o.job_key == j.key))
            .where(j.batch == batch)
            .order_by(j.technique, o.output_id)
        )
        found: dict[str, list[str]] = {}
        with self._read() as conn:
            for technique, output_id in conn.execute(query):
                found.setdefault(technique, []).append(output_id)
        return {technique: tuple(ids) for technique, ids in found.items()}

    def counts(self, batch: str | None = None) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, zeros included)."""
        c = jobs_table.c
        query = select(c.state, func.count()).where(*_filter(batch, None)).group_by(c.state)
        result = dict.fromkeys(JobState, 0)
        with self._read() as conn:
            for state, n in conn.execute(query):
                result[JobState(state)] = n
        return result

    def money(self, batch: str | None = None) -> tuple[float, float]:
        """``(spent, reserved)``: bills known so far, and what runs not billed yet may cost.

        ``spent`` includes the bills of attempts that ``retry_failed`` replaced.
        ``reserved`` holds, for every job that may have a run whose ``charged_cost`` is
        still unknown (submitting through done, and failed jobs that have a run: a bill
        may come late, CONTRACT.md §4), the larger of its quote and the highest bill seen
        for its technique (``highest_bills``): a quote is not a bill.
        """
        c = jobs_table.c
        where = _filter(batch, None)
        bill = func.coalesce(c.charged_cost, 0) + c.charged_before
        spent = select(func.coalesce(func.sum(bill), 0)).where(*where)
        highest = highest_bills_query().subquery()
        top = func.coalesce(highest.c.bill, 0)
        quote = func.coalesce(c.quoted_cost, 0)
        each = case((quote >= top, quote), else_=top)
        reserved = (
            select(func.coalesce(func.sum(each), 0))
            .select_from(jobs_table.outerjoin(highest, highest.c.technique == c.technique))
            .where(*where, unbilled(), c.charged_cost.is_(None))
        )
        with self._read() as conn:
            return float(conn.execute(spent).scalar_one()), float(
                conn.execute(reserved).scalar_one()
            )

    def highest_bills(self) -> dict[str, float]:
        """The highest bill seen for each technique, in any batch of the ledger.

        A bill counts once it tells what a run of the technique costs: that of a run
        that did not fail, or any bill above zero (a failed run is usually refunded).
        A technique missing here has no known bill yet.
        """
        with self._read() as conn:
            return {t: float(b) for t, b in conn.execute(highest_bills_query())}

    def known_runs(self) -> set[str]:
        """Every run id the ledger ever saw, in any batch and any attempt (``runs``).

        Reconciliation never adopts one of these: each already belongs to a job.
        """
        with self._read() as conn:
            return set(conn.execute(select(runs.c.run_id)).scalars())

    def events(self, key: JobKey | None = None) -> list[dict[str, Any]]:
        """The event log (of one job), oldest first: dicts with the ``events`` columns."""
        query = select(events).order_by(events.c.id)
        if key is not None:
            query = query.where(events.c.job_key == key)
        with self._read() as conn:
            return [event_dict(r) for r in conn.execute(query).mappings()]

    def set_meta(self, name: str, value: str | None) -> None:
        """Store a batch-level setting, replacing any earlier value.

        Two processes may set one name at once (cluster workers on PostgreSQL): the insert
        runs in a SAVEPOINT, and if the other one's row got there first, it is updated.
        """
        with self._write() as conn:
            done = conn.execute(update(meta).where(meta.c.name == name).values(value=value))
            if done.rowcount:
                return
            try:
                with conn.begin_nested():
                    conn.execute(insert(meta).values(name=name, value=value))
            except IntegrityError:
                conn.execute(update(meta).where(meta.c.name == name).values(value=value))

    def get_meta(self, name: str) -> str | None:
        """A batch-level setting, or None."""
        query = select(meta.c.value).where(meta.c.name == name)
        with self._read() as conn:
            value: str | None = conn.execute(query).scalar_one_or_none()
            return value

    def set_cost_unit(self, batch: str, unit: str) -> None:
        """Remember what ``batch``'s money is counted in (its techniques' ``cost_unit``),
        for the commands that read only the ledger (``status``, ``report``)."""
        if self.get_meta(_UNIT + batch) != unit:
            self.set_meta(_UNIT + batch, unit)

    def cost_unit(self, batches: Iterable[str]) -> str:
        """The unit of these batches' money: ``usd`` (also for ledgers older than this
        record), ``credits``, or ``mixed`` when they disagree."""
        units = {self.get_meta(_UNIT + batch) or "usd" for batch in batches}
        return units.pop() if len(units) == 1 else ("mixed" if units else "usd")


#: ``meta`` name prefix of a batch's cost unit (``set_cost_unit``).
_UNIT = "cost-unit:"


def highest_bills_query() -> Any:
    """``(technique, bill)``: each technique's highest informative bill (``highest_bills``)."""
    c = jobs_table.c
    told = and_(c.charged_cost.is_not(None), or_(c.error_code.is_(None), c.charged_cost > 0))
    return select(c.technique, func.max(c.charged_cost).label("bill")).where(told).group_by(
        c.technique
    )


def unbilled() -> ColumnElement[bool]:
    """Jobs that may have a run whose bill is still owed to them: in a reserving state, or
    failed with a run (a failed run may be billed, and its bill may come late)."""
    c = jobs_table.c
    reserving = c.state.in_([s.value for s in RESERVING_STATES])
    failed_run = and_(c.state == JobState.FAILED.value, c.run_id.is_not(None))
    return or_(reserving, failed_run)


def _filter(batch: str | None, states: Iterable[JobState] | None) -> list[ColumnElement[bool]]:
    c = jobs_table.c
    where: list[ColumnElement[bool]] = []
    if batch is not None:
        where.append(c.batch == batch)
    if states is not None:
        where.append(c.state.in_([JobState(s).value for s in states]))
    return where

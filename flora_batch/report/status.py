"""Where a batch stands, computed from the ledger: ``flora-batch status``.

``compute`` is pure: jobs, the event log, money and ``now`` in, a ``Status`` out.
Throughput and ETA come from the events table's timestamps: jobs that reached a
terminal state in the last ``WINDOW`` seconds of activity, per minute, and the jobs
left divided by that rate.  ``gather`` is the one function that reads (a ``Ledger``
passed in, through its public methods only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..manifest.sources import upload_keys
from ..plan import gone_keys, superseded_meta
from ..types import JobRecord, JobState, UploadRecord, money

if TYPE_CHECKING:
    from ..ledger import Ledger

#: Seconds of recent activity that throughput is measured over.
WINDOW = 600.0
#: States of a job whose run may exist and is not finished.
IN_FLIGHT = (
    JobState.SUBMITTING,
    JobState.RUNNING,
    JobState.DOWNLOADING,
    JobState.NEEDS_RECONCILE,
)


#: The order states are shown in: finished first, then the work in progress.
ORDER = (
    JobState.DONE,
    JobState.FAILED,
    JobState.UNRESOLVED,
    JobState.NEEDS_RECONCILE,
    JobState.DOWNLOADING,
    JobState.RUNNING,
    JobState.SUBMITTING,
    JobState.PLANNED,
)


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Failed jobs that share an error code, and the rows they hit."""

    code: str
    message: str
    rows: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON shape."""
        return {
            "code": self.code,
            "count": len(self.rows),
            "message": self.message,
            "rows": list(self.rows),
        }


@dataclass(frozen=True, slots=True)
class OldestRun:
    """The job in flight that was sent first."""

    row: str
    technique: str
    state: str
    run_id: str | None
    since: float
    age: float

    def as_dict(self) -> dict[str, Any]:
        """JSON shape."""
        return {
            "row": self.row,
            "technique": self.technique,
            "state": self.state,
            "run_id": self.run_id,
            "since": self.since,
            "age_seconds": round(self.age, 1),
        }


@dataclass(frozen=True, slots=True)
class Holder:
    """A `flora-batch worker` and the unfinished jobs it holds under its lease."""

    worker_id: str
    counts: Mapping[str, int]  # jobs by state
    lease_until: float | None  # the latest lease among them

    def as_dict(self, now: float) -> dict[str, Any]:
        """JSON shape."""
        left = None if self.lease_until is None else round(self.lease_until - now, 1)
        return {
            "worker_id": self.worker_id,
            "jobs": sum(self.counts.values()),
            "states": dict(self.counts),
            "lease_until": self.lease_until,
            "lease_seconds_left": left,
        }


@dataclass(frozen=True, slots=True)
class Status:
    """A batch (or a whole ledger) at one moment."""

    ledger: str
    batches: tuple[str, ...]
    counts: Mapping[JobState, int]
    spent: float
    reserved: float
    per_minute: float | None
    eta: float | None
    oldest: OldestRun | None
    failures: tuple[FailureGroup, ...]
    last_event: float | None
    now: float
    uploads: Mapping[str, int] = field(default_factory=dict)  # input files by upload state
    workers: tuple[Holder, ...] = ()  # who holds which unfinished jobs (`flora-batch worker`)
    unit: str = "usd"  # what ``spent`` and ``reserved`` count: usd, credits (Ledger.cost_unit)
    #: Jobs of edited or removed rows (``Plan.gone()`` at the last run), by state: not in
    #: ``counts``; the next run finishes those with a run in flight.
    superseded: Mapping[JobState, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Every job of the rows (superseded ones apart)."""
        return sum(self.counts.values())

    @property
    def in_flight(self) -> int:
        """Jobs whose run may exist and is not finished, superseded ones too."""
        return sum(self.counts[s] + self.superseded.get(s, 0) for s in IN_FLIGHT)

    @property
    def finished(self) -> bool:
        """There are jobs and every one is in a terminal state (nothing more happens on its
        own), superseded ones too."""
        states = [*self.counts.items(), *self.superseded.items()]
        return self.total > 0 and all(n == 0 or s.terminal for s, n in states)

    def as_dict(self) -> dict[str, Any]:
        """JSON shape, for ``status --json``."""
        return {
            "ledger": self.ledger,
            "batches": list(self.batches),
            "total": self.total,
            "states": {s.value: n for s, n in self.counts.items()},
            "in_flight": self.in_flight,
            "finished": self.finished,
            "spent": round(self.spent, 6),
            "reserved": round(self.reserved, 6),
            "cost_unit": self.unit,
            "per_minute": None if self.per_minute is None else round(self.per_minute, 3),
            "eta_seconds": None if self.eta is None else round(self.eta, 1),
            "oldest_in_flight": self.oldest.as_dict() if self.oldest else None,
            "failures": [g.as_dict() for g in self.failures],
            "last_event": self.last_event,
            "now": self.now,
            "uploads": dict(self.uploads),
            "workers": [w.as_dict(self.now) for w in self.workers],
            "superseded": {s.value: n for s, n in self.superseded.items() if n},
        }


def row_ref(rec: JobRecord) -> str:
    """How a person finds a job's row: its id, else ``row N``, plus ``file:line``."""
    name = rec.row_id if rec.row_id is not None else f"row {rec.row_index + 1}"
    return f"{name} ({rec.source})" if rec.source else name


def failures(records: Iterable[JobRecord]) -> tuple[FailureGroup, ...]:
    """Failed and unresolved jobs grouped by error code, most frequent first."""
    groups: dict[str, list[JobRecord]] = {}
    for rec in records:
        if rec.state is JobState.FAILED:
            groups.setdefault(rec.error_code or "unknown", []).append(rec)
        elif rec.state is JobState.UNRESOLVED:
            groups.setdefault("unresolved", []).append(rec)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return tuple(
        FailureGroup(code, recs[0].error_message or "", tuple(row_ref(r) for r in recs))
        for code, recs in ordered
    )


def oldest_in_flight(records: Iterable[JobRecord], now: float) -> OldestRun | None:
    """The in-flight job sent longest ago."""
    flying = [r for r in records if r.state in IN_FLIGHT]
    if not flying:
        return None
    rec = min(flying, key=lambda r: r.submitted_at or r.updated_at or now)
    since = rec.submitted_at or rec.updated_at or now
    return OldestRun(row_ref(rec), rec.technique, rec.state.value, rec.run_id, since, now - since)


def throughput(
    events: Sequence[Mapping[str, Any]], remaining: int, now: float
) -> tuple[float | None, float | None]:
    """``(jobs finished per minute, seconds left)`` from the event log of one batch.

    The rate counts each job's latest move into a terminal state within the last
    ``WINDOW`` seconds before ``now`` (or before the last finish, once nothing is
    left), never earlier than the first create.  ETA is None while the rate is zero.
    """
    finished: dict[str, float] = {}
    sends: list[float] = []
    terminal = {s.value for s in JobState if s.terminal}
    for e in events:
        if e["to_state"] in terminal:
            finished[e["job_key"]] = e["at"]
        elif e["to_state"] == JobState.SUBMITTING.value:
            sends.append(e["at"])
    if not finished or not sends:
        return None, None
    end = now if remaining else max(finished.values())
    start = max(end - WINDOW, min(sends))
    span = end - start
    if span <= 0:
        return None, (0.0 if not remaining else None)
    rate = sum(1 for t in finished.values() if start <= t <= end) / span
    eta = 0.0 if not remaining else (remaining / rate if rate > 0 else None)
    return rate * 60.0, eta


def upload_counts(records: Iterable[JobRecord], uploads: Iterable[UploadRecord]) -> dict[str, int]:
    """The input files these jobs use, counted by upload state (states present only)."""
    used = {key for rec in records for key in upload_keys(rec.inputs)}
    counts: dict[str, int] = {}
    for up in uploads:
        if up.sha256 in used:
            counts[up.state.value] = counts.get(up.state.value, 0) + 1
    return counts


def holders(records: Iterable[JobRecord]) -> tuple[Holder, ...]:
    """Unfinished jobs by the worker that holds them (jobs no worker holds are left out)."""
    counts: dict[str, dict[str, int]] = {}
    leases: dict[str, float | None] = {}
    for rec in records:
        if rec.worker_id is None or rec.state.terminal:
            continue
        held = counts.setdefault(rec.worker_id, {})
        held[rec.state.value] = held.get(rec.state.value, 0) + 1
        lease = max(rec.lease_until or 0.0, leases.get(rec.worker_id) or 0.0)
        leases[rec.worker_id] = lease or None
    return tuple(Holder(w, counts[w], leases[w]) for w in sorted(counts))


def compute(
    ledger_url: str,
    records: Sequence[JobRecord],
    events: Sequence[Mapping[str, Any]],
    money: tuple[float, float],
    now: float,
    uploads: Iterable[UploadRecord] = (),
    unit: str = "usd",
    superseded: frozenset[str] = frozenset(),
) -> Status:
    """The status of ``records`` (one batch, or every batch of a ledger); ``unit`` is
    what their money counts (``Ledger.cost_unit``).  The jobs in ``superseded`` (of rows
    edited or removed) are counted apart, and their failures are not the rows'."""
    counts = dict.fromkeys(JobState, 0)
    apart: dict[JobState, int] = {}
    for rec in records:
        if rec.key in superseded:
            apart[rec.state] = apart.get(rec.state, 0) + 1
        else:
            counts[rec.state] += 1
    keys = {r.key for r in records}
    mine = [e for e in events if e["job_key"] in keys]
    remaining = sum(n for s, n in [*counts.items(), *apart.items()] if not s.terminal)
    per_minute, eta = throughput(mine, remaining, now)
    if not any(counts[s] for s in IN_FLIGHT):
        eta = None if remaining else eta  # nothing is running: no end in sight
    return Status(
        ledger=ledger_url,
        batches=tuple(sorted({r.batch for r in records})),
        counts=counts,
        spent=money[0],
        reserved=money[1],
        per_minute=per_minute,
        eta=eta,
        oldest=oldest_in_flight(records, now),
        failures=failures(r for r in records if r.key not in superseded),
        last_event=max((e["at"] for e in mine), default=None),
        now=now,
        uploads=upload_counts(records, uploads),
        workers=holders(records),
        unit=unit,
        superseded=apart,
    )


def gather(ledger: Ledger, batch: str | None, now: float) -> Status:
    """Read one batch (or every batch, ``batch=None``) from the ledger and compute its status."""
    records = ledger.jobs(batch=batch)
    uploads = ledger.uploads().values()
    batches = {r.batch for r in records}
    unit = ledger.cost_unit(batches)
    gone = superseded_keys(ledger, batches)
    return compute(
        ledger.url, records, ledger.events(), ledger.money(batch), now, uploads, unit, gone
    )


def superseded_keys(ledger: Ledger, batches: Iterable[str]) -> frozenset[str]:
    """The keys of these batches that no row produced at their last run (``status`` and
    ``report`` read no manifest: ``settling.note_gone`` left them in the ledger)."""
    found: set[str] = set()
    for batch in batches:
        found.update(gone_keys(ledger.get_meta(superseded_meta(batch))))
    return frozenset(found)


# --- text ------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = int(max(0.0, seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _lease(until: float | None, now: float) -> str:
    if until is None:
        return "no lease"
    if until >= now:
        return f"lease {_duration(until - now)} left"
    return f"lease ran out {_duration(now - until)} ago: another worker may take them"


def lines(s: Status, *, max_rows: int = 10) -> list[str]:
    """The status as text lines, for a person."""
    name = ", ".join(s.batches) or "(no jobs)"
    states = " · ".join(f"{s.counts[state]} {state.value}" for state in ORDER if s.counts[state])
    out = [
        f"{name}: {s.total} jobs" + (" (all finished)" if s.finished and s.total else ""),
        f"  states   {states or 'none'}",
        f"  money    {money(s.spent, s.unit)} spent"
        + (
            f", {money(s.reserved, s.unit)} reserved (runs not billed yet)"
            if s.reserved > 0.005
            else ""
        ),
    ]
    rate = "?" if s.per_minute is None else f"{s.per_minute:.1f} jobs/min"
    out.append(f"  pace     {rate} · ETA {_duration(s.eta)}")
    if s.uploads:
        files = " · ".join(f"{n} {state}" for state, n in sorted(s.uploads.items()))
        out.append(f"  uploads  {sum(s.uploads.values())} input files: {files}")
    if any(s.superseded.values()):
        gone = " · ".join(f"{n} {state.value}" for state, n in sorted(s.superseded.items()) if n)
        flying = sum(s.superseded.get(state, 0) for state in IN_FLIGHT)
        note = f"; {flying} in flight: the next run finishes them" if flying else ""
        out.append(f"  superseded  {gone} (jobs of edited or removed rows{note})")
    waiting = s.counts[JobState.PLANNED]
    if waiting and not s.in_flight:
        out.append(f"  idle     {waiting} jobs waiting: run the batch again to continue")
    if s.oldest is not None:
        o = s.oldest
        run = f" {o.run_id}" if o.run_id else ""
        out.append(f"  oldest   {o.row}: {o.technique} {o.state}{run} for {_duration(o.age)}")
    for w in s.workers:
        held = " · ".join(f"{n} {state}" for state, n in sorted(w.counts.items()))
        out.append(f"  worker   {w.worker_id}: {held} ({_lease(w.lease_until, s.now)})")
    for group in s.failures:
        hit = ", ".join(group.rows[:max_rows]) + (" ..." if len(group.rows) > max_rows else "")
        out.append(f"  failed   {group.code} x{len(group.rows)}: {group.message[:120]}")
        out.append(f"           rows: {hit}")
    out.append(f"  ledger   {s.ledger}")
    return out

"""When to poll a run next: predict its end, poll just after it (a pure policy).

Every poll costs a request and every second between a run's end and our noticing it
delays the download, so the worker polls near the *expected* end and re-predicts at
every answer (still at least every ``max_poll``, never sooner than ``min_poll``):

1. a running run with progress ``p`` (a whole percent, taken at its midpoint ``p + 0.5``)
   ends at ``started + (now - started) * 100 / (p + 0.5)``, counted from the run's own
   ``started_at``: its time in FLORA's queue is not running time;
2. a running run without progress yet ends at ``started`` plus the typical *running*
   time of its technique (``completed_at - started_at`` of runs seen to complete);
3. a run whose technique has been seen to complete ends at ``created`` plus the typical
   *server-side* duration (``completed_at - created_at``: no polling lag in it, so the
   estimate cannot ratchet up with our own lateness);
4. a run with progress but no ``started_at`` (a dialect may omit it) is extrapolated
   from ``created``: late by its queue time, but still re-predicted at every poll;
5. otherwise, wait as long as the run has existed, at least ``4 x min_poll``: most runs
   are still in the queue at first.

The poll goes ``min_poll / 2`` after the predicted end; past it, every ``min_poll``
while the prediction came from progress, and with a growing gap (half the overshoot)
when it came from durations seen earlier, so a slow run does not cost a poll every
``min_poll`` until it ends.  Server times are mapped to our clock with the offset seen
at create (``created_at`` against the moment the create was in the air).

Nothing here reads a clock, the ledger or the network: ``Learned`` is fed by the worker.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ..config import Settings
from ..types import JobRecord, RunInfo

#: Durations kept per technique: recent runs say most about the next ones.
_KEEP = 64
#: Offsets kept: the server's clock against ours (plus half a round trip).
_KEEP_OFFSETS = 16
#: Resumed runs get their first poll spread at most this many per second (and over at
#: most ``max_poll``), so 10,000 runs loaded at once do not all poll in the same second.
RESUME_POLLS_PER_SECOND = 100.0


@dataclass(frozen=True, slots=True)
class Typical:
    """What runs of one technique usually take, in seconds (None: nothing seen yet)."""

    total: float | None = None  # created -> completed, on the server
    running: float | None = None  # started -> completed, on the server


class Learned:
    """Durations and the server clock's offset, learned while a worker runs.

    Durations from the ledger (``learn_prior``: ``Ledger.durations``, done jobs of any
    batch) are our own submit-to-done times of earlier jobs: they include our notice
    delay and the download, so they serve only until a run completes in this process,
    and their lower quartile is used.
    """

    def __init__(self) -> None:
        self._total: dict[str, deque[float]] = {}
        self._running: dict[str, deque[float]] = {}
        self._prior: dict[str, deque[float]] = {}
        self._cache: dict[str, Typical] = {}
        self._offsets: deque[float] = deque(maxlen=_KEEP_OFFSETS)
        self.offset = 0.0

    def learn_run(self, technique: str, run: RunInfo) -> None:
        """A run of ``technique`` completed: keep its server-side durations."""
        if run.completed_at is None or run.created_at is None:
            return
        _keep(self._total, technique, (run.completed_at - run.created_at) / 1000.0)
        if run.started_at is not None:
            _keep(self._running, technique, (run.completed_at - run.started_at) / 1000.0)
        self._cache.pop(technique, None)

    def learn_prior(self, technique: str, took: Iterable[float]) -> None:
        """Submit-to-done seconds of earlier jobs of ``technique`` (``Ledger.durations``)."""
        for seconds in took:
            if seconds > 0:
                _keep(self._prior, technique, seconds, 4 * _KEEP)
                self._cache.pop(technique, None)

    def learn_offset(self, created_at_ms: float | None, sent: float, answered: float) -> None:
        """A create was in the air from ``sent`` to ``answered`` (our clock); the server
        stamped ``created_at`` (its clock, ms) somewhere in between."""
        if created_at_ms is None:
            return
        self._offsets.append(created_at_ms / 1000.0 - (sent + answered) / 2)
        self.offset = statistics.median(self._offsets)

    @property
    def offset_known(self) -> bool:
        """Whether ``offset`` was measured (else it is the 0 it started at, or a guess)."""
        return bool(self._offsets)

    @property
    def offset_spread(self) -> float:
        """How far the measured offsets stray from their median, in seconds (0 if none)."""
        return max((abs(o - self.offset) for o in self._offsets), default=0.0)

    def typical(self, technique: str) -> Typical:
        """The median durations of ``technique`` (cached until something new is learned)."""
        found = self._cache.get(technique)
        if found is None:
            found = self._cache[technique] = self._compute(technique)
        return found

    def _compute(self, technique: str) -> Typical:
        total = self._total.get(technique)
        running = self._running.get(technique)
        if total:
            return Typical(
                total=statistics.median(total),
                running=statistics.median(running) if running else None,
            )
        prior = self._prior.get(technique)
        if prior:
            return Typical(total=sorted(prior)[len(prior) // 4])  # the lower quartile
        return Typical()


def _keep(into: dict[str, deque[float]], technique: str, seconds: float, most: int = _KEEP) -> None:
    if seconds >= 0:
        into.setdefault(technique, deque(maxlen=most)).append(seconds)


def next_poll_delay(
    run: RunInfo,
    job: JobRecord,
    typical: Typical,
    settings: Settings,
    now: float,
    offset: float = 0.0,
) -> float:
    """Seconds until the next poll of ``run`` (see the module docstring for the rules).

    Args:
        run: the run's latest answer.
        job: the job it belongs to (``submitted_at`` dates it when FLORA does not).
        typical: what runs of its technique usually take (``Learned.typical``).
        settings: ``min_poll`` and ``max_poll``.
        now: our clock, epoch seconds.
        offset: the server's clock minus ours, seconds.
    """
    lo, hi = settings.min_poll, settings.max_poll
    end, from_progress = predicted_end(run, typical, now, offset)
    if end is None:
        created = _ours(run.created_at, offset) or job.submitted_at or now
        wait = max(4 * lo, now - created)
    elif end > now:
        wait = end - now + lo / 2
    else:
        wait = lo if from_progress else (now - end) / 2
    return float(min(max(wait, lo), hi))


def predicted_end(
    run: RunInfo, typical: Typical, now: float, offset: float = 0.0
) -> tuple[float | None, bool]:
    """When ``run`` should end on our clock (None: no idea yet), and whether progress said so."""
    started = _ours(run.started_at, offset)
    running = run.status == "running" and started is not None and started <= now
    if running and started is not None and 0 < run.progress < 100:
        return started + (now - started) * 100.0 / (run.progress + 0.5), True
    if running and started is not None and typical.running is not None:
        return started + typical.running, False
    created = _ours(run.created_at, offset)
    if created is not None and typical.total is not None:
        return created + typical.total, False
    if created is not None and created < now and 0 < run.progress < 100:  # no started_at:
        return created + (now - created) * 100.0 / (run.progress + 0.5), True  # a late guess
    return None, False


def first_polls(count: int, settings: Settings) -> list[float]:
    """Offsets (seconds from now) for the first polls of ``count`` resumed runs.

    Spread evenly, at most ``RESUME_POLLS_PER_SECOND`` and over at most ``max_poll``:
    a handful of runs are polled at once, 10,000 are not all polled in the same second.
    """
    window = min(settings.max_poll, count / RESUME_POLLS_PER_SECOND)
    return [window * i / count for i in range(count)]


def _ours(server_ms: float | None, offset: float) -> float | None:
    return None if server_ms is None else server_ms / 1000.0 - offset

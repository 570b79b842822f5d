"""What the worker's parts share: the per-batch state, the pacer, and what a batch reports.

``Worker`` (worker.py: the loop, submit and poll) is built from ``Downloads``
(downloads.py) and ``Reconciler`` (reconcile.py), which all work on the one
``WorkerState`` defined here: the jobs as last written to the ledger, the schedule
(heaps of due times), the in-flight slots and the money committed so far.  Keeping
the state in one place is what lets each part stay small without passing a dozen
arguments around.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .. import retrying
from ..config import Settings
from ..errors import FloraError
from ..ledger import Ledger
from ..remote.client import FloraClient
from ..results.local import ResultStore
from ..types import JobKey, JobRecord, JobState, RunInfo, RunInput, SavedJob, Technique
from .budget import Budget
from .polling import Learned

Clock = Callable[[], float]
#: Seconds added to the client's timeout before a create whose fate is unknown may be
#: sent again with its key (``WorkerState._settle``; a quarter of a shorter timeout).
SETTLE_MARGIN = 1.0
ProgressHook = Callable[["Snapshot"], None]
#: The upload stage's hook (``uploads.Uploader.resolve_inputs``): a job's inputs with its
#: upload placeholders swapped for asset URLs; None while a file is still uploading;
#: UploadError when one will not be ready in this run.
InputResolver = Callable[[JobRecord], "tuple[RunInput, ...] | None"]
#: Cluster mode (``cluster.py``): claim up to n more jobs from the shared ledger.
Refill = Callable[[int], list[JobRecord]]


@dataclass
class Snapshot:
    """What the progress display shows; cheap to build."""

    total: int
    counts: Counter[JobState]
    spent: float
    in_flight_limit: int
    started: float
    now: float
    done_this_run: int
    uploads: tuple[int, int, int] | None = None  # input files (ready, not ready, total)

    @property
    def eta(self) -> float | None:
        """Seconds left at the pace of this run so far, if there is a pace yet."""
        finished = self.counts[JobState.DONE] + self.counts[JobState.FAILED]
        left = self.total - finished - self.counts[JobState.UNRESOLVED]
        if self.done_this_run <= 0 or left <= 0:
            return None
        return (self.now - self.started) / self.done_this_run * left


@dataclass
class Outcome:
    """How the batch ended."""

    counts: Counter[JobState]
    spent: float
    reserved: float
    stopped: str | None = None  # budget | credits | auth | interrupted | runtime | outage
    error: FloraError | None = None
    stuck: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the operator must know (money)


class Pacer:
    """Adaptive in-flight limit (halved on 429, grown back on success) and create pacing."""

    def __init__(self, limit: int, rate: float, clock: Clock) -> None:
        self.max = max(1, limit)
        self.limit = self.max
        self.rate = rate
        self.clock = clock
        self.paused_until = 0.0
        self.next_submit = 0.0
        self._streak = 0

    def ready_at(self) -> float:
        """The earliest time the next create may leave."""
        return max(self.paused_until, self.next_submit)

    def took(self) -> float:
        """A create is leaving; returns how long it must wait first (shared pacing only)."""
        if self.rate > 0:
            self.next_submit = max(self.clock(), self.next_submit) + 1.0 / self.rate
        return 0.0

    def rate_limited(self, retry_after: float | None) -> float:
        """Back off the whole pool; returns the pause in seconds."""
        self.limit = max(1, self.limit // 2)
        self._streak = 0
        pause = min(retry_after if retry_after is not None else 5.0, 30.0)
        self.paused_until = max(self.paused_until, self.clock() + pause)
        return pause

    def succeeded(self) -> None:
        """One more success: after ``limit`` in a row, allow one more in flight."""
        self._streak += 1
        if self._streak >= self.limit and self.limit < self.max:
            self.limit += 1
            self._streak = 0


class WorkerState:
    """The state of one batch's work, and the few moves every part of the worker makes."""

    def __init__(
        self,
        ledger: Ledger,
        client: FloraClient,
        results: ResultStore,
        techniques: dict[str, Technique],
        *,
        settings: Settings,
        concurrency: int,
        max_cost: float | None = None,
        clock: Clock = time.time,
        progress: ProgressHook | None = None,
        resolve_inputs: InputResolver | None = None,
        refill: Refill | None = None,
        pacer: Pacer | None = None,
        superseded: frozenset[JobKey] = frozenset(),
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.results = results
        self.techniques = techniques
        self.settings = settings
        self.max_cost = max_cost
        self.clock = clock
        self.progress = progress
        self.resolve_inputs = resolve_inputs
        self.pacer = pacer or Pacer(concurrency, settings.submit_rate, clock)
        self.refill = refill
        #: Jobs of edited or removed rows whose paid run is finished anyway; their files
        #: go under ``naming.SUPERSEDED_FOLDER`` (``Downloads._name``), apart from the rows'.
        self.superseded = superseded
        self._refill_at = 0.0
        self.stop_event = asyncio.Event()
        self.jobs: dict[JobKey, JobRecord] = {}
        self.queue: deque[JobKey] = deque()
        self.due: list[tuple[float, int, str, JobKey]] = []  # charges, downloads, submits
        self.polls_due: list[tuple[float, int, JobKey]] = []  # kept apart: polls are capped
        self.polling = 0  # polls in the air
        self.tasks: set[asyncio.Task[None]] = set()
        self._finished: list[asyncio.Task[None]] = []  # done tasks not reaped yet
        self._wake = asyncio.Event()  # set when a task ends or a stop is asked for
        self.slots: set[JobKey] = set()
        self.windows: dict[JobKey, list[tuple[float, float]]] = {}
        self.learned = Learned()
        self.download_rounds: Counter[JobKey] = Counter()
        self.stuck: dict[JobKey, str] = {}
        self.unknown_since: dict[JobKey, float] = {}
        #: The runs whose last polls failed, with their failures (gone at an answer).
        self.poll_streaks: dict[JobKey, retrying.Streak] = {}
        #: Completed runs with one output, being fetched: the ledger learns of the run's
        #: end with the file (``finish_run``), or, if that fails, first (``_record_outputs``).
        self.completed_runs: dict[JobKey, RunInfo] = {}
        self.names: dict[str, JobKey] = {}  # output names taken, casefolded (``_claim``)
        #: Loaded jobs with saved outputs whose names ``_claim`` has not taken yet: taken at
        #: the first download, so resuming a batch that is all done claims no names.
        self.unclaimed: list[JobRecord] = []
        #: Done jobs loaded light (``Worker._load_saved``): how many, their bills, their
        #: runs (a reconcile must not adopt them), and those whose files' names are not
        #: claimed yet (from their recorded paths, at the first download).
        self.saved_count = 0
        self.saved_spent = 0.0
        self.saved_runs: set[str] = set()
        self.unclaimed_saved: list[SavedJob] = []
        #: Techniques whose earlier durations ``_load`` has read from the ledger.
        self.primed: set[str] = set()
        self._init_exactly_once(max_cost)
        self.stop_new: str | None = None
        self.abort: FloraError | None = None
        self._stop_error: FloraError | None = None
        self.batch: str | None = None  # money is counted per batch: a ledger may hold several
        self.last_success = clock()
        self.started = clock()
        self.done_this_run = 0
        self._seq = itertools.count()

    def _init_exactly_once(self, max_cost: float | None) -> None:
        """The state that keeps every run bought once and every bill counted."""
        #: Money against ``max_cost``: bills known, and a hold on every run not billed yet.
        self.budget = Budget(max_cost)
        self.budget_loaded = False
        #: One create at a time per technique whose run id is not yet on disk: the jobs of
        #: each technique whose create may have made a run nobody has identified yet.
        #: While a technique's set is not empty, no other job of it is sent, so a run
        #: found in the history in one job's window of sends can only be that job's
        #: (``reconcile.py``; docs/design.md, "One unknown create per technique").
        self.gates: dict[str, set[JobKey]] = {}
        #: Creates in the air (``_submit``): a stop waits them out and records their runs.
        self.flights: dict[JobKey, asyncio.Future[RunInfo]] = {}
        #: Jobs marked ``submitting`` whose create has not left yet (a clean stop releases them).
        self.unsent: set[JobKey] = set()
        #: Jobs whose key FLORA is known to hold (a 409 or 422 answered a repeat of it).
        self.proven: set[JobKey] = set()
        #: 404s in a row on a job's polls: after a few, the run is "lost" (``mark_lost``).
        self.not_found: Counter[JobKey] = Counter()
        #: Run ids known to belong to jobs (the ledger's ``runs``, read when needed).
        self.known_runs: set[str] | None = None
        #: The server clock's offset as an earlier process measured it (ledger ``meta``).
        self.stored_offset: float | None = None
        #: Jobs this worker lost to another (LeaseLost): a refill never loads them again.
        self.handed_away: set[JobKey] = set()
        #: Looks at the run history that could not tell yet, per job (``reconcile.py``).
        self.reconcile_tries: Counter[JobKey] = Counter()
        #: Things about money the operator must be told (a bill that never came ...).
        self.budget_notes: list[str] = []

    def _settle(self) -> float:
        """Seconds after which a create sent now cannot still be running at FLORA.

        The assumption (docs/design.md): FLORA finishes or gives up a create within
        the client's timeout; a create whose answer was lost is never sent again with
        its key before this long after it left (two same-key creates that overlap at
        FLORA may both run, CONTRACT.md §6).
        """
        timeout = self.settings.timeout
        return timeout + min(SETTLE_MARGIN, timeout / 4)

    def _schedule(self, key: JobKey, when: float, kind: str) -> None:
        """Do ``kind`` (poll, charge, download, submit) for ``key`` at ``when``."""
        if kind == "poll":
            heapq.heappush(self.polls_due, (when, next(self._seq), key))
        else:
            heapq.heappush(self.due, (when, next(self._seq), kind, key))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Start a step; its end wakes the loop (no rescan of every task to find it)."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        self._finished.append(task)
        self._wake.set()

    async def _committed(self) -> None:
        """Wait until the ledger's open group of commits is durable (at once if none is).

        Before an action that the ledger must know of if the process dies right after
        it: a paid create (its ``submitting``), a file put under its final name (its
        job's run and ``downloading``), so a resume finds what that action belongs to.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(error: FloraError | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        self.ledger.on_commit(settle)
        await done

    def _quote(self, rec: JobRecord) -> float:
        if rec.quoted_cost is not None:
            return rec.quoted_cost
        tech = self.techniques.get(rec.technique)
        return tech.run_cost if tech else 0.0

    def _release(self, key: JobKey) -> None:
        self.slots.discard(key)

    def _hold_gate(self, key: JobKey) -> None:
        """``key``'s create may make a run nobody has identified yet: hold its technique."""
        self.gates.setdefault(self.jobs[key].technique, set()).add(key)

    def _open_gate(self, key: JobKey) -> None:
        """``key``'s create is settled on disk (a run id, or surely none): free its technique."""
        rec = self.jobs.get(key)
        holders = self.gates.get(rec.technique) if rec is not None else None
        if holders is not None:
            holders.discard(key)
            if not holders:
                del self.gates[rec.technique]  # type: ignore[union-attr]
            self._wake.set()

    def _gate_open_for(self, rec: JobRecord) -> bool:
        """Whether ``rec``'s create may leave: no other job of its technique holds it."""
        holders = self.gates.get(rec.technique)
        return not holders or rec.key in holders

    def _bill(self, key: JobKey, charged: float | None, *, failed: bool = False) -> None:
        """A bill arrived for ``key``'s run: it replaces the run's hold in the budget."""
        if charged is None or not self.budget.holds(key):
            return  # no news, or a bill already counted
        rec = self.jobs[key]
        informative = not failed or charged > 0
        self.budget.billed(key, rec.technique, charged, informative=informative)

    def _record_outputs(self, key: JobKey, run: RunInfo) -> None:
        """``downloading``: the completed run's outputs and bill, before their files."""
        self._update(
            self.ledger.mark_downloading(
                key, run.outputs, now=self.clock(), charged_cost=run.charged_cost
            )
        )

    def _update(self, rec: JobRecord) -> JobRecord:
        self.jobs[rec.key] = rec
        return rec

"""What the worker's parts share, each as its own small object, handed to each part.

The loop (``loop.Worker``) composes four parts: ``creates.Creates`` (the create path),
``tracking.Poller`` (polls and what an answer means), ``downloads.Downloader`` (outputs
to files) and ``reconcile.Reconciler`` (a lost create's run, from the history).  None of
them inherits anything; each is given, at construction, the few shared objects it needs:

* ``Board``: each job as the ledger last said, which hold an in-flight slot, which wait;
* ``Agenda``: what is due when (heaps of due times), and the steps running now;
* ``Pulse``: when FLORA last answered (the outage stop) and how many jobs this run did;
* ``ServerClock``: the server clock's offset from ours (measured, or stored earlier);
* the ``Budget`` (``budget.py``), the ``Pacer`` (below), the ledger and the client.

Plus what a batch reports (``Snapshot``, ``Outcome``) and the helpers they all use
(``committed``, ``settle_seconds``, ``quote``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..errors import FloraError
from ..ledger import Ledger
from ..types import JobKey, JobRecord, JobState, RunInfo, RunInput, Technique
from .polling import Learned

Clock = Callable[[], float]
#: Seconds added to the client's timeout before a create whose fate is unknown may be
#: sent again with its key (``settle_seconds``; a quarter of a shorter timeout).
SETTLE_MARGIN = 1.0
ProgressHook = Callable[["Snapshot"], None]
#: The upload stage's hook (``uploads.Uploader.resolve_inputs``): a job's inputs with its
#: upload placeholders swapped for asset URLs; None while a file is still uploading;
#: UploadError when one will not be ready in this run.
InputResolver = Callable[[JobRecord], "tuple[RunInput, ...] | None"]
#: Cluster mode (``cluster.py``): claim up to n more jobs from the shared ledger.
Refill = Callable[[int], list[JobRecord]]
#: The ledger ``meta`` entry of the server clock's offset, and the change that rewrites it.
OFFSET_META = "server-clock-offset"
_OFFSET_NOTE = 0.5


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


@dataclass
class Board:
    """The worker's view of its jobs: each as the ledger last said (``update`` after every
    transition), the ones holding an in-flight slot, and the ones waiting, with why."""

    jobs: dict[JobKey, JobRecord] = field(default_factory=dict)
    slots: set[JobKey] = field(default_factory=set)
    stuck: dict[JobKey, str] = field(default_factory=dict)

    def __getitem__(self, key: JobKey) -> JobRecord:
        return self.jobs[key]

    def update(self, rec: JobRecord) -> JobRecord:
        """Keep ``rec`` (a transition's returned record) as the job's latest."""
        self.jobs[rec.key] = rec
        return rec

    def release(self, key: JobKey) -> None:
        """The job no longer holds an in-flight slot."""
        self.slots.discard(key)


class Agenda:
    """What is due when, and the steps running now.

    Two heaps of due times: polls apart (at most a few in the air, ``loop._POLLS_AT_ONCE``),
    and the rest (a job's next submit, download, bill or history read).  Steps run as
    tasks whose end wakes the loop (``nap``) without rescanning every task.
    """

    def __init__(self) -> None:
        self.due: list[tuple[float, int, str, JobKey]] = []
        self.polls_due: list[tuple[float, int, JobKey]] = []
        self.polling = 0  # polls in the air
        self.tasks: set[asyncio.Task[None]] = set()
        self._finished: list[asyncio.Task[None]] = []  # ended, not reaped yet
        self.wake = asyncio.Event()  # set when a task ends or a stop is asked for
        self._seq = itertools.count()

    def at(self, key: JobKey, when: float, kind: str) -> None:
        """Do ``kind`` (poll, charge, download, submit, reconcile) for ``key`` at ``when``."""
        if kind == "poll":
            heapq.heappush(self.polls_due, (when, next(self._seq), key))
        else:
            heapq.heappush(self.due, (when, next(self._seq), kind, key))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Start a step; its end wakes the loop."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        self._finished.append(task)
        self.wake.set()

    def ended(self) -> Iterator[asyncio.Task[None]]:
        """The tasks that ended since the last look (only those), forgotten as they go."""
        while self._finished:
            task = self._finished.pop()
            self.tasks.discard(task)
            yield task

    async def nap(self, seconds: float) -> None:
        """Sleep until a task ends (or a stop is asked for) or ``seconds`` pass.

        O(1) per wake-up whatever the number of tasks: ``asyncio.wait`` over every task
        added and removed a callback on each of them, every time.
        """
        if not self.wake.is_set():
            timer = asyncio.get_running_loop().call_later(seconds, self.wake.set)
            try:
                await self.wake.wait()
            finally:
                timer.cancel()
        self.wake.clear()

    def pending(self) -> bool:
        """Whether anything is scheduled for later."""
        return bool(self.due or self.polls_due)

    async def cancel_all(self) -> None:
        """Cancel every running step and wait for them to end."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


@dataclass
class Pulse:
    """When FLORA last answered (no answer for ``outage_limit`` stops the batch) and how
    many jobs this run finished (the progress display's pace)."""

    last_success: float
    done_this_run: int = 0

    def beat(self, now: float) -> None:
        """FLORA answered (or the wait is not FLORA's fault: uploads)."""
        self.last_success = max(self.last_success, now)


class ServerClock:
    """The server clock's offset from ours: measured from create answers (``Learned``),
    else stored in the ledger by an earlier process, else unknown.

    Reconciliation reads the history's stamps with it (``window``); polls read a run's
    times with it, or with a guess from the run itself (``for_run``: only the poll
    schedule uses the guess, never a decision about money).
    """

    #: Seconds the server's clock may be off ours when no offset was ever measured.
    UNKNOWN_SLACK = 600.0
    #: Seconds of doubt around a measured offset, and around one stored earlier.
    MEASURED_SLACK = 2.0
    STORED_SLACK = 5.0

    def __init__(self, learned: Learned, ledger: Ledger) -> None:
        self.learned = learned
        self.ledger = ledger
        self.stored: float | None = None

    def load(self) -> None:
        """Read what an earlier process stored; use it until this one measures its own."""
        stored = self.ledger.get_meta(OFFSET_META)
        self.stored = float(stored) if stored else None
        if self.stored is not None and not self.learned.offset_known:
            self.learned.offset = self.stored

    def measured(self, created_at_ms: float | None, sent: float, answered: float) -> None:
        """A create was in the air from ``sent`` to ``answered`` (our clock), and the
        server stamped its run ``created_at``: learn from it, and keep the offset in the
        ledger when it moved (a later process reconciles with it before it sends)."""
        self.learned.learn_offset(created_at_ms, sent, answered)
        offset = self.learned.offset
        moved = self.stored is None or abs(offset - self.stored) > _OFFSET_NOTE
        if self.learned.offset_known and moved:
            self.stored = offset
            self.ledger.set_meta(OFFSET_META, f"{offset:.3f}")

    def window(self) -> tuple[float, float]:
        """The offset to read history stamps with, and the doubt around it, in seconds."""
        if self.learned.offset_known:
            return self.learned.offset, self.MEASURED_SLACK + self.learned.offset_spread
        if self.stored is not None:
            return self.stored, self.STORED_SLACK
        return 0.0, self.UNKNOWN_SLACK

    def for_run(self, rec: JobRecord, run: RunInfo) -> float:
        """The offset to read ``run``'s times with, for the poll schedule."""
        if self.learned.offset_known or self.stored is not None:
            return self.learned.offset
        if run.created_at is not None and rec.submitted_at is not None:
            return run.created_at / 1000.0 - rec.submitted_at
        return 0.0


def settle_seconds(settings: Settings) -> float:
    """Seconds after which a create sent now cannot still be running at FLORA.

    The assumption (docs/design.md): FLORA finishes or gives up a create within the
    client's timeout; a create whose answer was lost is never sent again with its key
    before this long after it left (two same-key creates that overlap at FLORA may both
    run, CONTRACT.md §6).
    """
    return settings.timeout + min(SETTLE_MARGIN, settings.timeout / 4)


async def committed(ledger: Ledger) -> None:
    """Wait until the ledger's open group of commits is durable (at once if none is).

    Before an action that the ledger must know of if the process dies right after it: a
    paid create (its ``submitting``), a file put under its final name (its job's run),
    so a resume finds what that action belongs to.
    """
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(error: FloraError | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    ledger.on_commit(settle)
    await done


def quote(rec: JobRecord, techniques: dict[str, Technique]) -> float:
    """What a job's run was quoted: recorded when it was planned, else its technique's."""
    if rec.quoted_cost is not None:
        return rec.quoted_cost
    tech = techniques.get(rec.technique)
    return tech.run_cost if tech else 0.0

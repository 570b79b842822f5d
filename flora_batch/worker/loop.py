"""The worker: one loop that drives every job of a batch to its end, read top to bottom.

The life of one job, in the order this module tells it::

    planned ──_submit──► (creates.Creates.send) ──► running ──_poll──► (tracking.Poller)
        ──► completed ──_download──► (downloads.Downloader) ──► done
    a create whose answer was lost ──_reconcile──► (reconcile.Reconciler) ──► running / …

``Worker.run`` owns the schedule (``state.Agenda``): it starts creates while there is
room under the in-flight limit, the create pace, the budget and the technique's gate; it
starts the polls whose time has come (at most ``_POLLS_AT_ONCE`` in the air, so polls
never crowd out creates and downloads) and whatever else is due; and it sleeps until a
step ends or the next due time.  Each step is one of the composed parts; what a part
returns says what follows, and the loop schedules it.

The rule that makes it safe to kill at any instant: each step writes the ledger *before*
the action that depends on it (intent before action) and *right after* learning anything
(a run id, an output's hash); ``creates.py`` holds the rules of the paid step.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence

from ..config import Settings
from ..errors import AuthError, FloraError, LeaseLost, ResultsError, UploadError
from ..ledger import Ledger
from ..remote.client import FloraClient
from ..results.local import ResultStore
from ..types import JobKey, JobRecord, JobState, RunInfo, RunInput, SavedJob, Technique
from . import polling
from .budget import Budget, may_owe_a_bill
from .creates import PROVING_CODES, Creates
from .downloads import Downloader, Names
from .polling import Learned
from .reconcile import Reconciler, Sends
from .state import (
    Agenda,
    Board,
    Clock,
    InputResolver,
    Outcome,
    Pacer,
    ProgressHook,
    Pulse,
    Refill,
    ServerClock,
    Snapshot,
    quote,
    settle_seconds,
)
from .tracking import Poller, lost_bill_note

log = logging.getLogger("flora_batch.worker")

__all__ = [
    "Clock",
    "InputResolver",
    "Outcome",
    "Pacer",
    "ProgressHook",
    "Refill",
    "Snapshot",
    "Worker",
]

_INPUT_WAIT = 0.25  # seconds between looks at a job whose input files are still uploading
_REFILL_IDLE = 0.25  # seconds between claims that found nothing
#: Polls in the air at once; the rest wait in the heap (due polls cost nothing there).
#: Below the client's connection limit (32 by default), so creates and downloads always
#: find a connection and never queue behind thousands of polls.
_POLLS_AT_ONCE = 24
#: Seconds the ledger's transitions wait for their shared commit; a create waits for the
#: commit of its ``submitting`` (intent before a paid action), so this much at most.
_COMMIT_WINDOW = 0.02
#: Jobs ``_start_submits`` passes over (their technique busy) before it stops looking.
_PASS_OVER = 64


class Worker:
    """Drives one batch's jobs to a terminal state (or a clean, resumable stop)."""

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
        self.ledger, self.client, self.results = ledger, client, results
        self.techniques, self.settings, self.clock = techniques, settings, clock
        self.progress, self.resolve_inputs, self.refill = progress, resolve_inputs, refill
        self.pacer = pacer or Pacer(concurrency, settings.submit_rate, clock)
        self.stop_event = asyncio.Event()
        # What the parts share, each passed to the parts that need it.
        self.board = Board()
        self.agenda = Agenda()
        self.pulse = Pulse(last_success=clock())
        self.budget = Budget(max_cost)
        self.learned = Learned()
        self.server_clock = ServerClock(self.learned, ledger)
        self.sends = Sends()
        self.names = Names()
        #: Runs of done jobs loaded light (``_load_saved``): a reconcile must not adopt them.
        self.saved_runs: set[str] = set()
        # The parts.
        self.creates = Creates(
            client=client,
            ledger=ledger,
            board=self.board,
            sends=self.sends,
            budget=self.budget,
            pacer=self.pacer,
            server_clock=self.server_clock,
            settings=settings,
            clock=clock,
        )
        self.creates.on_open = self.agenda.wake
        self.poller = Poller(
            client=client,
            ledger=ledger,
            board=self.board,
            agenda=self.agenda,
            pacer=self.pacer,
            pulse=self.pulse,
            budget=self.budget,
            learned=self.learned,
            server_clock=self.server_clock,
            settings=settings,
            clock=clock,
        )
        self.downloader = Downloader(
            client=client,
            ledger=ledger,
            results=results,
            board=self.board,
            names=self.names,
            settings=settings,
            clock=clock,
            superseded=superseded,
        )
        self.reconciler = Reconciler(
            client=client,
            ledger=ledger,
            board=self.board,
            sends=self.sends,
            server_clock=self.server_clock,
            techniques=techniques,
            settings=settings,
            clock=clock,
            saved_runs=self.saved_runs,
            peers=self._shared_peers if refill is not None else None,
        )
        # The loop's own state.
        self.queue: deque[JobKey] = deque()
        self.batch: str | None = None  # money is counted per batch: a ledger may hold several
        self.started = clock()
        self.stop_new: str | None = None
        self.abort: FloraError | None = None
        self._stop_error: FloraError | None = None
        self.budget_notes: list[str] = []
        self.saved_count = 0
        self.saved_spent = 0.0
        #: Techniques whose earlier durations ``_load`` has read from the ledger.
        self.primed: set[str] = set()
        self._money_loaded = False
        self._refill_at = 0.0
        #: Jobs this worker lost to another (LeaseLost): a refill never loads them again.
        self.handed_away: set[JobKey] = set()

    # -- what callers read ---------------------------------------------------------------

    @property
    def jobs(self) -> dict[JobKey, JobRecord]:
        """Each job as the ledger last said (the board's)."""
        return self.board.jobs

    @property
    def stuck(self) -> dict[JobKey, str]:
        """Jobs waiting for a later run, and why."""
        return self.board.stuck

    @property
    def done_this_run(self) -> int:
        """Jobs this run finished."""
        return self.pulse.done_this_run

    # -- the loop ------------------------------------------------------------------

    async def run(
        self, jobs: Iterable[JobRecord], saved: Sequence[SavedJob] = (), *, batch: str | None = None
    ) -> Outcome:
        """Work every given job until done, failed, unresolved, or a stop.

        Args:
            jobs: whole records of the jobs to work (a done one is checked too).
            saved: done jobs, light (``Ledger.saved_jobs``): only their files are checked.
            batch: the batch, when ``jobs`` may be empty (money is counted per batch).
        """
        self.batch = batch
        self._load(list(jobs))
        self._load_saved(saved)
        deadline = self.started + self.settings.max_runtime if self.settings.max_runtime else None
        stopper = asyncio.ensure_future(self.stop_event.wait())
        stopper.add_done_callback(lambda _: self.agenda.wake.set())
        last_progress = 0.0
        # Transitions share durable commits, one per ``_COMMIT_WINDOW`` at most
        # (``LedgerCore.group_commits``): a commit costs more than the statements it holds.
        self.ledger.group_commits(asyncio.get_running_loop().call_later, _COMMIT_WINDOW)
        try:
            while not self.abort:
                now = self.clock()
                stop = self._why_stop(now, deadline)
                if stop is not None:
                    self.stop_new = stop
                    break
                self._top_up(now)
                self._start_submits(now)
                self._start_due(now)
                if not self.agenda.tasks and not self._waiting():
                    break
                if self.progress and now - last_progress >= 0.5:
                    self.progress(self.snapshot())
                    last_progress = now
                await self.agenda.nap(self._sleep_for(now))
                self._reap()
        except BaseException:
            # The batch is dying (cancelled: a crash, as far as the ledger can tell):
            # nothing more is learned or written, and the open group of commits is not
            # flushed on the way out, exactly as when the process is killed.
            stopper.cancel()
            self._abandon()
            raise
        stopper.cancel()
        try:
            await self.agenda.cancel_all()  # every step is in the ledger already
            await self.creates.wind_down()  # but a create in the air is waited out
        finally:
            self.ledger.group_commits(None)
        return self._outcome()

    def _why_stop(self, now: float, deadline: float | None) -> str | None:
        """Why the loop must end now, if it must: a stop asked for, time up, FLORA gone."""
        if self.stop_event.is_set() or (deadline and now >= deadline):
            return "interrupted" if self.stop_event.is_set() else "runtime"
        if now - self.pulse.last_success > self.settings.outage_limit:
            return "outage"
        return None

    def _waiting(self) -> bool:
        """Whether anything is left that a later wake-up could start."""
        return self.agenda.pending() or (bool(self.queue) and self.stop_new is None)

    def _sleep_for(self, now: float) -> float:
        agenda = self.agenda
        wake = [agenda.due[0][0]] if agenda.due else []
        if agenda.polls_due and agenda.polling < _POLLS_AT_ONCE:  # else a poll's end wakes us
            wake.append(max(agenda.polls_due[0][0], self.pacer.paused_until))
        if self.queue and self.stop_new is None and len(self.board.slots) < self.pacer.limit:
            wake.append(self.pacer.ready_at())
        return max(0.01, min([*wake, now + 0.5]) - now)

    def _reap(self) -> None:
        """Look at the steps that ended since the last wake-up (only those)."""
        for task in self.agenda.ended():
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, LeaseLost) and self.refill is not None:
                log.warning("lost the lease: %s", exc)  # another worker has the job now
                key = JobKey(exc.key)
                self.handed_away.add(key)
                self.board.release(key)
                self.creates.open(key)
                self.budget.release(key)
            elif exc is not None:
                raise exc  # a bug: surface it

    def _abandon(self) -> None:
        """The process "dies" here: cancel everything, record nothing, commit nothing."""
        for task in self.agenda.tasks:
            task.cancel()
        self.creates.abandon()
        self.ledger.abandon_group()

    # -- loading ------------------------------------------------------------------------

    def _load(self, jobs: list[JobRecord]) -> None:
        """Put each job where its ledger state says it belongs."""
        self.batch = jobs[0].batch if jobs else self.batch
        self._load_money()
        for technique in {rec.technique for rec in jobs if not rec.state.terminal} - self.primed:
            # How long its runs took before, in this batch or any other (a nightly cron);
            # once per technique: a cluster worker loads jobs at every refill.
            self.learned.learn_prior(technique, self.ledger.durations(technique))
            self.primed.add(technique)
        running: list[JobRecord] = []
        now = self.clock()
        for rec in jobs:
            self.board.update(rec)
            if rec.outputs:
                self.names.unclaimed.append(rec)
            if rec.charged_cost is None and may_owe_a_bill(rec):
                price = quote(rec, self.techniques)
                self.budget.hold(rec.key, rec.technique, price)
                self.budget.base -= self.budget.reserve(rec.technique, price)
            if rec.run_id is None and rec.submitted_at is not None:
                # An earlier process may have sent creates any time since the first one
                # until its last recorded send (``updated_at``: ``note_send``).
                self.sends.windows[rec.key] = [(rec.submitted_at, _last_send(rec, now))]
            if rec.run_id and rec.charged_cost is None and rec.state.terminal:
                self.agenda.at(rec.key, now, "charge")  # the bill came late
            if rec.state is JobState.SUBMITTING:
                # Its last create may still be running at FLORA: sent again, with its key,
                # only once it surely is not (two same-key creates may both run, CONTRACT §6).
                self.creates.hold(rec.key)
                when = _last_send(rec, now) + settle_seconds(self.settings)
                self.agenda.at(rec.key, when, "submit")
            elif rec.state is JobState.RUNNING:
                running.append(rec)
            else:
                self._place(rec)
        self._resume_polls(running)

    def _load_money(self) -> None:
        """The batch's money and the server clock's offset from the ledger, once."""
        if self._money_loaded:
            return
        self._money_loaded = True
        spent, reserved = self.ledger.money(self.batch)
        self.budget.base = spent + reserved
        self.budget.highest = self.ledger.highest_bills()
        self.server_clock.load()

    def _load_saved(self, saved: Sequence[SavedJob]) -> None:
        """Done jobs, light: each file checked (one ``lstat``); a job with a file gone or a
        bill still unknown is read whole and loaded like the others."""
        deep, verify = self.settings.verify_deep, self.results.verify
        whole: list[JobRecord] = []
        for job in saved:
            if (job.run_id and job.charged_cost is None) or not all(
                verify(path, size, sha, deep=deep) for path, size, sha in job.files
            ):
                whole.append(self.ledger.get(job.key))
                continue
            self.saved_count += 1
            self.saved_spent += job.charged_cost or 0.0
            if job.run_id:
                self.saved_runs.add(job.run_id)
            if job.files:
                self.names.unclaimed_saved.append(job)
        if whole:
            self._load(whole)

    def _place(self, rec: JobRecord) -> None:
        """Queue, download, reconcile or check a loaded job, as its state says."""
        if rec.state is JobState.PLANNED:
            self.queue.append(rec.key)
        elif rec.state is JobState.DOWNLOADING:
            self.board.slots.add(rec.key)
            self.agenda.spawn(self._download(rec.key))
        elif rec.state is JobState.NEEDS_RECONCILE:
            self.creates.hold(rec.key)
            if rec.error_code in PROVING_CODES:
                self.sends.proven.add(rec.key)
            self.agenda.spawn(self._reconcile(rec.key))
        elif rec.state is JobState.DONE:
            self._check_done(rec)

    def _resume_polls(self, running: list[JobRecord]) -> None:
        """First polls of runs already in flight: oldest first, spread out (``polling``)."""
        running.sort(key=lambda r: r.submitted_at or 0.0)
        now = self.clock()
        spread = polling.first_polls(len(running), self.settings)
        for rec, later in zip(running, spread, strict=True):
            self.board.slots.add(rec.key)
            self.agenda.at(rec.key, now + later, "poll")

    def _check_done(self, rec: JobRecord) -> None:
        """A done job's files must still be there; if not, fetch them again (never re-buy)."""
        deep = self.settings.verify_deep
        bad = [
            o for o in rec.outputs if not self.results.verify(o.path, o.size, o.sha256, deep=deep)
        ]
        if not bad:
            return
        for out in bad:
            self.ledger.clear_output_file(rec.key, out.output_id)
        self.board.update(self.ledger.reopen_download(rec.key, now=self.clock()))
        self.board.slots.add(rec.key)
        self.agenda.spawn(self._download(rec.key))

    # -- starting what may start ---------------------------------------------------------

    def _start_due(self, now: float) -> None:
        """Start what is due: polls up to ``_POLLS_AT_ONCE`` in the air (none while a 429
        pauses the pool), everything else."""
        agenda = self.agenda
        paused = now < self.pacer.paused_until
        while (
            not paused
            and agenda.polls_due
            and agenda.polls_due[0][0] <= now
            and agenda.polling < _POLLS_AT_ONCE
        ):
            key = heapq.heappop(agenda.polls_due)[2]
            agenda.polling += 1
            agenda.spawn(self._poll(key))
        while agenda.due and agenda.due[0][0] <= now:
            _, _, kind, key = heapq.heappop(agenda.due)
            if kind == "charge":
                agenda.spawn(self._reread_charge(key))
            elif kind == "download":
                agenda.spawn(self._download(key))
            elif kind == "reconcile":
                agenda.spawn(self._reconcile(key))
            else:
                self.queue.appendleft(key)

    def _start_submits(self, now: float) -> None:
        """Start creates while there is room, pace, budget and a free gate.

        Jobs whose technique's gate is held by another job (``Creates.gates``), or whose
        technique has no known bill yet under a cap while one of its runs is held
        (``Budget.awaits_first_bill``), are passed over, not dropped: they keep their place.
        """
        passed: list[JobKey] = []
        try:
            while (
                self.queue
                and self.stop_new is None
                and len(self.board.slots) < self.pacer.limit
            ):
                if self.pacer.ready_at() > now or len(passed) > _PASS_OVER:
                    return
                key = self.queue[0]
                rec = self.board[key]
                waits_for_bill = rec.state is JobState.PLANNED and self.budget.awaits_first_bill(
                    rec.technique
                )
                if not self.creates.may_leave(rec) or waits_for_bill:
                    passed.append(self.queue.popleft())
                    continue
                inputs = self._ready_inputs(key, now)
                if inputs is None:
                    continue
                if rec.state is JobState.PLANNED:
                    price = quote(rec, self.techniques)
                    if not self.budget.allows(rec.technique, price):
                        self.stop_new = "budget"
                        return
                    self.budget.hold(key, rec.technique, price)
                self.queue.popleft()
                self.creates.hold(key)
                self.board.slots.add(key)
                self.agenda.spawn(self._submit(key, inputs, wait=self.pacer.took()))
        finally:
            self.queue.extendleft(reversed(passed))

    def _top_up(self, now: float) -> None:
        """Cluster mode: claim more jobs from the shared ledger while there is room."""
        if self.refill is None or self.stop_new is not None or self.queue or now < self._refill_at:
            return
        room = self.pacer.limit - len(self.board.slots)
        if room <= 0:
            return
        claimed = self.refill(room)
        self._refill_at = now + (0.0 if claimed else _REFILL_IDLE)
        # A job this worker still works on (its lease lapsed and it claimed it again) is
        # never loaded twice: two steps of one job would race each other.
        fresh = [r for r in claimed if not self._working_on(r.key)]
        if fresh:
            self._load(fresh)

    def _working_on(self, key: JobKey) -> bool:
        """Whether this worker has ``key`` in hand (not settled, not handed away)."""
        rec = self.board.jobs.get(key)
        return rec is not None and not rec.state.terminal and key not in self.handed_away

    def _shared_peers(self, rec: JobRecord) -> dict[JobKey, JobRecord]:
        """Cluster mode: every job of the batch in the shared ledger (others' too)."""
        return {r.key: r for r in self.ledger.jobs(batch=rec.batch)}

    def _ready_inputs(self, key: JobKey, now: float) -> tuple[RunInput, ...] | None:
        """What the first queued job's create will send, once its input files are uploaded;
        None while they are not (the job waits, unpaid) or cannot be.

        Waiting for uploads is not an outage: the upload stage bounds its own waits.
        """
        rec = self.board[key]
        try:
            inputs = rec.inputs if self.resolve_inputs is None else self.resolve_inputs(rec)
        except UploadError as exc:
            self.queue.popleft()
            self.board.stuck[key] = str(exc)
            return None
        if inputs is None:
            self.queue.popleft()
            self.pulse.beat(now)
            self.agenda.at(key, now + _INPUT_WAIT, "submit")
        return inputs

    # -- the life of a job: submit → poll → download, or reconcile -------------------------

    async def _submit(self, key: JobKey, inputs: tuple[RunInput, ...], wait: float = 0.0) -> None:
        """Create the job's run (``Creates.send``), then follow what the create came to."""
        sent = await self.creates.send(key, inputs, wait)
        if sent.kind == "running" and sent.run is not None:
            self.pulse.beat(self.clock())
            polled = self.poller.answered(key, sent.run)
            if polled.fetch:  # done at once: the create's answer had the outputs
                self.agenda.spawn(self._download(key, polled.fresh))
            return
        self.board.release(key)
        if sent.kind == "requeue":
            self.queue.appendleft(key)
        elif sent.kind == "reconcile":
            await self._reconcile(key)
        elif sent.kind == "park" and sent.again_at is not None:
            self.agenda.at(key, sent.again_at, "submit")
        elif sent.kind == "stop":
            self.stop_new, self._stop_error = sent.stop, sent.error
            if isinstance(sent.error, AuthError):
                self.abort = sent.error

    async def _poll(self, key: JobKey) -> None:
        """One poll (``_start_due`` counted it in ``agenda.polling``); a completed run's
        download follows in the same task, once the poll slot is given back."""
        try:
            polled = await self.poller.poll(key)
        finally:
            self.agenda.polling -= 1
            self.agenda.wake.set()  # a poll slot is free: due polls may start
        if polled.abort is not None:
            self.abort = polled.abort
        elif polled.fetch:
            await self._download(key, polled.fresh)

    async def _download(self, key: JobKey, fresh: RunInfo | None = None) -> None:
        """Fetch the job's outputs (``Downloader``); done, or another round later."""
        try:
            fetched = await self.downloader.download(key, fresh)
        except ResultsError as exc:
            self.abort = exc
            return
        if fetched.again_at is not None:
            self.agenda.at(key, fetched.again_at, "download")
            return
        self.board.release(key)
        if fetched.stuck is not None:
            self.board.stuck[key] = fetched.stuck
            return
        self.pulse.done_this_run += 1
        self.pulse.beat(self.clock())
        if self.board[key].charged_cost is None:
            self.agenda.at(key, self.clock() + self.settings.min_poll, "charge")

    async def _reconcile(self, key: JobKey) -> None:
        """Look for a lost create's run (``Reconciler``), then follow its verdict."""
        verdict = await self.reconciler.reconcile(key)
        if verdict.kind == "later" and verdict.again_at is not None:
            self.agenda.at(key, verdict.again_at, "reconcile")
            return
        if verdict.kind == "adopt":
            self.board.slots.add(key)
            self.agenda.at(key, self.clock(), "poll")
        elif verdict.kind == "resend":
            self.budget.release(key)
            self.queue.appendleft(key)
        elif verdict.kind == "failed":
            self.budget.release(key)
        # The next create of the technique waits for a commit that holds this verdict.
        self.creates.open(key)

    async def _reread_charge(self, key: JobKey) -> None:
        """A bill that came late (``Poller.reread_charge``); under a cap, a technique whose
        first bill never came is not bought again in this run."""
        if not await self.poller.reread_charge(key):
            self.stop_new = self.stop_new or "budget"
            self.budget_notes.append(lost_bill_note(self.board[key]))

    # -- reporting ---------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Counts and money for the progress display."""
        jobs = self.board.jobs.values()
        counts = Counter(r.state for r in jobs)
        counts[JobState.DONE] += self.saved_count
        return Snapshot(
            total=len(self.board.jobs) + self.saved_count,
            counts=counts,
            spent=self.saved_spent + sum(r.charged_cost or 0.0 for r in jobs),
            in_flight_limit=self.pacer.limit,
            started=self.started,
            now=self.clock(),
            done_this_run=self.pulse.done_this_run,
        )

    def _outcome(self) -> Outcome:
        spent, reserved = self.ledger.money(self.batch)
        counts = Counter(r.state for r in self.board.jobs.values())
        counts[JobState.DONE] += self.saved_count
        error = self.abort or self._stop_error
        stopped = self.stop_new
        if self.abort and stopped is None:
            stopped = "auth" if isinstance(self.abort, AuthError) else "error"
        stuck = self.board.stuck
        return Outcome(
            counts=counts,
            spent=spent,
            reserved=reserved,
            stopped=stopped,
            error=error,
            stuck=[f"{self.board[k].source or k}: {why}" for k, why in stuck.items()],
            notes=self._money_notes(spent),
        )

    def _money_notes(self, spent: float) -> list[str]:
        """Say plainly when the batch spent more than its cap, and why (a bill above every
        bill seen before for its technique: the first one, or one that grew)."""
        cap = self.budget.cap
        if cap is None or spent <= cap + 1e-9:
            return list(self.budget_notes)
        over = [
            f"{slug}: billed up to {self.budget.highest[slug]:.4g} a run against a quote of "
            f"{tech.run_cost:.4g}"
            for slug, tech in sorted(self.techniques.items())
            if self.budget.first_bill_over(slug, tech.run_cost)
        ]
        why = "; ".join(over) or "bills came in above what was reserved for them"
        return [
            *self.budget_notes,
            f"spent {spent:.4g}, above max_cost {cap:.4g}: a run's bill exceeded every bill "
            f"seen before for its technique when it was bought ({why})",
        ]


def _last_send(rec: JobRecord, now: float) -> float:
    """When the last create of a loaded ``submitting`` job may have left: its last record
    (``mark_submitting`` or ``note_send``; every send is recorded before it leaves)."""
    return min(now, rec.updated_at or rec.submitted_at or now)

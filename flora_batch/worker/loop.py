"""The worker pool: submit → poll → download, with every step in the ledger first.

One loop (``Worker.run``) owns the schedule: it starts submissions while there is room
under the in-flight limit, the submission pace and the budget; it starts polls for the
runs whose time has come (a heap of due times, not a sleeping task per run; at most
``_POLLS_AT_ONCE`` in the air, so polls never crowd out creates and downloads); and it
sleeps until a step ends (each task's done-callback wakes it) or the next due time.

The rule that makes it safe to kill at any instant: each step writes the ledger *before*
the action that depends on it (intent before action) and *right after* learning
anything (a run id, an output's hash).  A job found in ``submitting`` after a crash is
sent again only with the same idempotency key, inside the server's key window;
otherwise it is reconciled from the run history, never bought again blindly.

The parts: this module (the loop, loading, submit, poll), ``downloads.py``,
``reconcile.py``, ``polling.py`` (when to poll: a pure policy) and ``workstate.py``
(the state they share, the pacer, ``Snapshot`` and ``Outcome``).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import Counter
from collections.abc import Iterable, Sequence

from .. import retrying
from ..errors import (
    AmbiguousCreate,
    ApiError,
    AuthError,
    FloraError,
    IdempotencyConflict,
    IdempotencyDuplicate,
    InsufficientCredits,
    LeaseLost,
    RateLimited,
    TransportError,
    UploadError,
)
from ..types import JobKey, JobRecord, JobState, RunInfo, RunInput, SavedJob
from . import polling
from .budget import may_owe_a_bill
from .reconcile import Reconciler
from .state import Clock, InputResolver, Outcome, Pacer, ProgressHook, Refill, Snapshot
from .tracking import Tracker

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

_MAX_SUBMIT_TRIES = 8
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
#: ``mark_needs_reconcile`` codes that prove FLORA holds the job's key (a run exists).
_PROVING_CODES = frozenset({"idempotency_duplicate", "idempotency_conflict"})
_EXPIRED = "its idempotency key may have been forgotten by FLORA (older than its window)"
#: The ledger ``meta`` entry of the server clock's offset, and the change that rewrites it.
_OFFSET_META = "server-clock-offset"
_OFFSET_NOTE = 0.5
#: Refusals that stop the batch rather than say anything about one job's create.
_STOPPING = (AuthError, InsufficientCredits, RateLimited)


class Worker(Tracker, Reconciler):
    """Drives one batch's jobs to a terminal state (or a clean, resumable stop)."""

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
        stopper.add_done_callback(lambda _: self._wake.set())
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
                if not self.tasks and not self._waiting():
                    break
                if self.progress and now - last_progress >= 0.5:
                    self.progress(self.snapshot())
                    last_progress = now
                await self._nap(self._sleep_for(now))
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
            await self._wind_down()
        finally:
            self.ledger.group_commits(None)
        return self._outcome()

    def _why_stop(self, now: float, deadline: float | None) -> str | None:
        """Why the loop must end now, if it must: a stop asked for, time up, FLORA gone."""
        if self.stop_event.is_set() or (deadline and now >= deadline):
            return "interrupted" if self.stop_event.is_set() else "runtime"
        if now - self.last_success > self.settings.outage_limit:
            return "outage"
        return None

    async def _nap(self, seconds: float) -> None:
        """Sleep until a task ends (its done-callback sets ``_wake``) or ``seconds`` pass.

        O(1) per wake-up whatever the number of tasks: ``asyncio.wait`` over every task
        added and removed a callback on each of them, every time.
        """
        if not self._wake.is_set():
            timer = asyncio.get_running_loop().call_later(seconds, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
        self._wake.clear()

    def _waiting(self) -> bool:
        """Whether anything is left that a later wake-up could start."""
        return bool(self.due or self.polls_due) or (bool(self.queue) and self.stop_new is None)

    def _sleep_for(self, now: float) -> float:
        wake = [self.due[0][0]] if self.due else []
        if self.polls_due and self.polling < _POLLS_AT_ONCE:  # else a poll's end wakes us
            wake.append(max(self.polls_due[0][0], self.pacer.paused_until))
        if self.queue and self.stop_new is None and len(self.slots) < self.pacer.limit:
            wake.append(self.pacer.ready_at())
        return max(0.01, min([*wake, now + 0.5]) - now)

    def _reap(self) -> None:
        """Look at the tasks that ended since the last wake-up (only those)."""
        while self._finished:
            task = self._finished.pop()
            self.tasks.discard(task)
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, LeaseLost) and self.refill is not None:
                log.warning("lost the lease: %s", exc)  # another worker has the job now
                key = JobKey(exc.key)
                self.handed_away.add(key)
                self._release(key)
                self._open_gate(key)
                self.budget.release(key)
            elif exc is not None:
                raise exc  # a bug: surface it

    async def _wind_down(self) -> None:
        """A clean stop: every step is cancelled (each is already in the ledger), but the
        creates in the air are waited out (at most ``_settle``) and their runs recorded,
        so that no job is left with a create whose fate nobody knows (a cluster worker
        hands its jobs back right after)."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        for key in self.unsent:  # stopped before its create left: nothing to wait out
            if self.jobs[key].state is JobState.SUBMITTING:
                reason = "stopped before its create was sent"
                self._update(self.ledger.release_unsent(key, now=self.clock(), reason=reason))
        self.unsent.clear()
        flights = dict(self.flights)
        if flights:
            await asyncio.wait(flights.values(), timeout=self._settle())
        for key, flight in flights.items():
            if not flight.done():
                flight.cancel()  # its job stays submitting: resent only after a settle
                continue
            run = None if flight.cancelled() or flight.exception() else flight.result()
            if run is not None and self.jobs[key].state is JobState.SUBMITTING:
                self._record_run(key, run)
        self.flights.clear()

    def _abandon(self) -> None:
        """The process "dies" here: cancel everything, record nothing, commit nothing."""
        for task in self.tasks:
            task.cancel()
        for flight in self.flights.values():
            flight.cancel()
        self.ledger.abandon_group()

    # -- loading and scheduling -------------------------------------------------------

    def _load(self, jobs: list[JobRecord]) -> None:
        """Put each job where its ledger state says it belongs."""
        self.batch = jobs[0].batch if jobs else self.batch
        self._load_budget()
        for technique in {rec.technique for rec in jobs if not rec.state.terminal} - self.primed:
            # How long its runs took before, in this batch or any other (a nightly cron);
            # once per technique: a cluster worker loads jobs at every refill.
            self.learned.learn_prior(technique, self.ledger.durations(technique))
            self.primed.add(technique)
        running: list[JobRecord] = []
        now = self.clock()
        for rec in jobs:
            self.jobs[rec.key] = rec
            if rec.outputs:
                self.unclaimed.append(rec)
            if rec.charged_cost is None and may_owe_a_bill(rec):
                self.budget.hold(rec.key, rec.technique, self._quote(rec))
                self.budget.base -= self.budget.reserve(rec.technique, self._quote(rec))
            if rec.run_id is None and rec.submitted_at is not None:
                # An earlier process may have sent creates any time since the first one
                # until its last recorded send (``updated_at``: ``note_send``).
                self.windows[rec.key] = [(rec.submitted_at, _last_send(rec, now))]
            if rec.run_id and rec.charged_cost is None and rec.state.terminal:
                self._schedule(rec.key, now, "charge")  # the bill came late
            if rec.state is JobState.SUBMITTING:
                # Its last create may still be running at FLORA: sent again, with its key,
                # only once it surely is not (two same-key creates may both run, CONTRACT §6).
                self._hold_gate(rec.key)
                self._schedule(rec.key, _last_send(rec, now) + self._settle(), "submit")
            elif rec.state is JobState.RUNNING:
                running.append(rec)
            else:
                self._place(rec)
        self._resume_polls(running)

    def _load_budget(self) -> None:
        """The batch's money from the ledger, once: bills, reservations, highest bills."""
        if self.budget_loaded:
            return
        self.budget_loaded = True
        spent, reserved = self.ledger.money(self.batch)
        self.budget.base = spent + reserved
        self.budget.highest = self.ledger.highest_bills()
        stored = self.ledger.get_meta(_OFFSET_META)
        self.stored_offset = float(stored) if stored else None
        if self.stored_offset is not None and not self.learned.offset_known:
            self.learned.offset = self.stored_offset  # until this process measures its own

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
                self.unclaimed_saved.append(job)
        if whole:
            self._load(whole)

    def _place(self, rec: JobRecord) -> None:
        """Queue, download, reconcile or check a loaded job, as its state says."""
        if rec.state is JobState.PLANNED:
            self.queue.append(rec.key)
        elif rec.state is JobState.DOWNLOADING:
            self.slots.add(rec.key)
            self._spawn(self._download(rec.key))
        elif rec.state is JobState.NEEDS_RECONCILE:
            self._hold_gate(rec.key)
            if rec.error_code in _PROVING_CODES:
                self.proven.add(rec.key)
            self._spawn(self._reconcile(rec.key))
        elif rec.state is JobState.DONE:
            self._check_done(rec)

    def _resume_polls(self, running: list[JobRecord]) -> None:
        """First polls of runs already in flight: oldest first, spread out (``polling``)."""
        running.sort(key=lambda r: r.submitted_at or 0.0)
        now = self.clock()
        spread = polling.first_polls(len(running), self.settings)
        for rec, later in zip(running, spread, strict=True):
            self.slots.add(rec.key)
            self._schedule(rec.key, now + later, "poll")

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
        self.jobs[rec.key] = self.ledger.reopen_download(rec.key, now=self.clock())
        self.slots.add(rec.key)
        self._spawn(self._download(rec.key))

    def _start_due(self, now: float) -> None:
        """Start what is due: polls up to ``_POLLS_AT_ONCE`` in the air (none while a 429
        pauses the pool), everything else."""
        paused = now < self.pacer.paused_until
        while (
            not paused
            and self.polls_due
            and self.polls_due[0][0] <= now
            and self.polling < _POLLS_AT_ONCE
        ):
            key = heapq.heappop(self.polls_due)[2]
            self.polling += 1
            self._spawn(self._poll(key))
        while self.due and self.due[0][0] <= now:
            _, _, kind, key = heapq.heappop(self.due)
            if kind == "charge":
                self._spawn(self._reread_charge(key))
            elif kind == "download":
                self._spawn(self._download(key))
            elif kind == "reconcile":
                self._spawn(self._reconcile(key))
            else:
                self.queue.appendleft(key)

    def _start_submits(self, now: float) -> None:
        """Start creates while there is room, pace, budget and a free gate.

        Jobs whose technique's gate is held by another job (``WorkerState.gates``), or
        whose technique has no known bill yet under a cap while one of its runs is held
        (``Budget.allows``), are passed over, not dropped: they keep their place.
        """
        passed: list[JobKey] = []
        try:
            while self.queue and self.stop_new is None and len(self.slots) < self.pacer.limit:
                if self.pacer.ready_at() > now or len(passed) > _PASS_OVER:
                    return
                key = self.queue[0]
                rec = self.jobs[key]
                if not self._gate_open_for(rec) or self._awaits_first_bill(rec):
                    passed.append(self.queue.popleft())
                    continue
                inputs = self._ready_inputs(key, now)
                if inputs is None:
                    continue
                if rec.state is JobState.PLANNED:
                    quote = self._quote(rec)
                    if not self.budget.allows(rec.technique, quote):
                        self.stop_new = "budget"
                        return
                    self.budget.hold(key, rec.technique, quote)
                self.queue.popleft()
                self._hold_gate(key)
                self.slots.add(key)
                self._spawn(self._submit(key, inputs, wait=self.pacer.took()))
        finally:
            self.queue.extendleft(reversed(passed))

    def _awaits_first_bill(self, rec: JobRecord) -> bool:
        """Under a cap, a technique with no known bill buys one run at a time: wait for its
        first bill before buying the next (a quote is not a bill, CONTRACT.md §4)."""
        return rec.state is JobState.PLANNED and self.budget.awaits_first_bill(rec.technique)

    def _top_up(self, now: float) -> None:
        """Cluster mode: claim more jobs from the shared ledger while there is room."""
        if self.refill is None or self.stop_new is not None or self.queue or now < self._refill_at:
            return
        room = self.pacer.limit - len(self.slots)
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
        rec = self.jobs.get(key)
        return rec is not None and not rec.state.terminal and key not in self.handed_away

    def _ready_inputs(self, key: JobKey, now: float) -> tuple[RunInput, ...] | None:
        """What the first queued job's create will send, once its input files are uploaded;
        None while they are not (the job waits, unpaid) or cannot be.

        Waiting for uploads is not an outage: the upload stage bounds its own waits.
        """
        try:
            inputs = self._inputs(self.jobs[key])
        except UploadError as exc:
            self.queue.popleft()
            self.stuck[key] = str(exc)
            return None
        if inputs is None:
            self.queue.popleft()
            self.last_success = max(self.last_success, now)
            self._schedule(key, now + _INPUT_WAIT, "submit")
        return inputs

    def _inputs(self, rec: JobRecord) -> tuple[RunInput, ...] | None:
        """What the create sends: the job's inputs, placeholders resolved to asset URLs."""
        return rec.inputs if self.resolve_inputs is None else self.resolve_inputs(rec)

    # -- submit ------------------------------------------------------------------------

    async def _submit(self, key: JobKey, inputs: tuple[RunInput, ...], wait: float = 0.0) -> None:
        """Create the job's run with ``inputs`` (``_ready_inputs``'): key committed first,
        repeated only with the same key, only inside its window, only while leased."""
        if wait > 0:  # a slot reserved by the cluster-wide pacing
            await asyncio.sleep(wait)
        rec = self.jobs[key]
        maybe_sent = rec.state is JobState.SUBMITTING
        if rec.state is JobState.PLANNED:
            rec = self._update(self.ledger.mark_submitting(key, now=self.clock(), grouped=True))
            self.unsent.add(key)  # until the create leaves: a clean stop gives it back
            await self._committed()  # on disk before the create may leave
            self.unsent.discard(key)
        not_before = 0.0
        for attempt in range(1, _MAX_SUBMIT_TRIES + 1):
            if self.clock() < not_before:  # the last create may still be running at FLORA
                await asyncio.sleep(not_before - self.clock())
            if maybe_sent and not self._key_alive(rec):
                await self._to_reconcile(key, "key_expired", _EXPIRED)
                return
            self.ledger.check_lease(key, now=self.clock())  # LeaseLost: another has it
            if attempt > 1 or maybe_sent:  # a send again: on disk before it leaves
                self.ledger.note_send(key, now=self.clock(), attempt=attempt, grouped=True)
                await self._committed()
            sent_at = self.clock()
            try:
                run = await self._fly(key, rec, inputs)
            except FloraError as exc:
                if self._may_have_left(exc):  # only such a send can have made a run
                    maybe_sent = True
                    self._note_window(key, sent_at)
                if isinstance(exc, AmbiguousCreate) and exc.timed_out:
                    not_before = sent_at + self._settle()
                if not await self._create_failed(key, exc, attempt, maybe_sent):
                    return
                continue
            self._note_window(key, sent_at)
            self._created(key, run, sent_at)
            return
        self._park(key, maybe_sent)

    async def _fly(self, key: JobKey, rec: JobRecord, inputs: tuple[RunInput, ...]) -> RunInfo:
        """One create request, in its own task: a stop waits it out (``_wind_down``) rather
        than cutting it off with its fate unknown."""
        flight = asyncio.ensure_future(
            self.client.create_run(rec.technique, inputs, rec.idempotency_key)
        )
        self.flights[key] = flight
        try:
            return await asyncio.shield(flight)
        finally:
            if flight.done():
                self.flights.pop(key, None)

    @staticmethod
    def _may_have_left(exc: FloraError) -> bool:
        """Whether FLORA may have created the run despite this error."""
        if isinstance(exc, AmbiguousCreate):
            return True
        if isinstance(exc, ApiError):
            return exc.status >= 500
        return not isinstance(exc, TransportError)  # connect errors never left

    def _note_window(self, key: JobKey, sent_at: float) -> None:
        self.windows.setdefault(key, []).append((sent_at, self.clock()))

    def _key_alive(self, rec: JobRecord) -> bool:
        """Whether a create sent now with the job's key reaches FLORA inside the key's window.

        The window runs from the first send with the key (``submitted_at``; FLORA's own
        count starts later, at its arrival); this send may take up to the client's
        timeout to arrive, and a margin of 5% of the window covers clocks and doubt.
        Checked before every attempt: retries and back-offs can outlast a window.
        """
        sent = rec.submitted_at
        if sent is None:
            return True
        window = self.settings.key_window
        return self.clock() + self.settings.timeout + 0.05 * window < sent + window

    def _created(self, key: JobKey, run: RunInfo, sent_at: float) -> None:
        self.last_success = self.clock()
        self.learned.learn_offset(run.created_at, sent_at, self.last_success)
        self._remember_offset()
        self.pacer.succeeded()
        self._record_run(key, run)

    def _record_run(self, key: JobKey, run: RunInfo) -> None:
        """The create answered with ``run``: the job is running (its first poll scheduled,
        or its download started when the answer already had the outputs)."""
        rec = self._update(
            self.ledger.mark_running(key, run.run_id, now=self.clock(), request_id=run.request_id)
        )
        if self.known_runs is not None:
            self.known_runs.add(run.run_id)
        # The technique is free for its next create: that create waits for the commit of
        # its own ``submitting``, which is this one's or a later one, so this run id is
        # on disk before another create of the technique can leave.
        self._open_gate(key)
        log.debug("submitted %s as %s", rec.source or key, run.run_id)
        if self._after_poll(key, run):  # done at once: the create's answer had the outputs
            self._spawn(self._download(key))

    def _remember_offset(self) -> None:
        """Keep the server clock's offset in the ledger when it moved: a later process
        reconciles with it before it has sent anything (``reconcile.py``)."""
        offset, stored = self.learned.offset, self.stored_offset
        if self.learned.offset_known and (stored is None or abs(offset - stored) > _OFFSET_NOTE):
            self.stored_offset = offset
            self.ledger.set_meta(_OFFSET_META, f"{offset:.3f}")

    async def _create_failed(
        self, key: JobKey, exc: FloraError, attempt: int, maybe_sent: bool
    ) -> bool:
        """Record what a failed create means; True to try again with the same key."""
        if isinstance(exc, RateLimited):
            pause = self.pacer.rate_limited(exc.retry_after)
            if not maybe_sent:
                self._requeue_unsent(key, f"rate limited (request-id {exc.request_id})")
                return False
            await asyncio.sleep(pause)
            return True
        if isinstance(exc, IdempotencyDuplicate | IdempotencyConflict):
            self.proven.add(key)
            code = exc.code or "idempotency_duplicate"
            await self._to_reconcile(key, code, str(exc), exc.request_id)
            return False
        if exc.retryable:
            if attempt < _MAX_SUBMIT_TRIES:
                await asyncio.sleep(retrying.backoff(attempt, retrying.DEFAULT_POLICY, exc))
            return True
        if maybe_sent and isinstance(exc, ApiError) and not isinstance(exc, _STOPPING):
            # FLORA refused a repeat of a create that may have landed: the first one's run
            # may exist, and be paid for; look for it instead of failing the job.
            reason = f"FLORA refused a repeat of a create that may have landed: {exc}"
            await self._to_reconcile(key, "retry_refused", reason, exc.request_id)
            return False
        self._create_refused(key, exc, maybe_sent)
        return False

    async def _to_reconcile(
        self, key: JobKey, code: str, reason: str, request_id: str | None = None
    ) -> None:
        """A run may exist for the job's key, its id unknown: find it in the run history."""
        self._update(
            self.ledger.mark_needs_reconcile(
                key, now=self.clock(), reason=reason, request_id=request_id, code=code
            )
        )
        self._release(key)
        await self._reconcile(key)

    def _create_refused(self, key: JobKey, exc: FloraError, maybe_sent: bool) -> None:
        """A definite no: nothing was created by this request."""
        now = self.clock()
        if isinstance(exc, InsufficientCredits | AuthError):
            self._requeue_unsent(key, str(exc), requeue=False, maybe_sent=maybe_sent)
            if isinstance(exc, AuthError):
                self.abort = exc
            self.stop_new = "credits" if isinstance(exc, InsufficientCredits) else "auth"
            self._stop_error = exc
            return
        code = exc.code if isinstance(exc, ApiError) else type(exc).__name__
        self._update(
            self.ledger.mark_failed(
                key, code=code or "refused", message=str(exc), category="input", now=now
            )
        )
        self.budget.release(key)
        self._release(key)
        self._open_gate(key)

    def _requeue_unsent(
        self, key: JobKey, reason: str, *, requeue: bool = True, maybe_sent: bool = False
    ) -> None:
        """Nothing was created: give the reservation back and queue the job again."""
        if not maybe_sent:
            self._update(self.ledger.release_unsent(key, now=self.clock(), reason=reason))
            self.budget.release(key)
            self._open_gate(key)
        self._release(key)
        if requeue:
            self.queue.appendleft(key)

    def _park(self, key: JobKey, maybe_sent: bool) -> None:
        """The create kept failing: give up on it for now, and try again later.

        A job none of whose creates can have left (each failed to connect) goes back to
        ``planned``: nothing was sent, so it is never reconciled (it could only adopt
        someone else's run).  Otherwise it stays ``submitting``, its technique held, and
        is sent again with its key later.
        """
        self._release(key)
        if not maybe_sent:
            self._update(
                self.ledger.release_unsent(key, now=self.clock(), reason="could not reach FLORA")
            )
            self.budget.release(key)
            self._open_gate(key)
        self.stuck[key] = "the create request kept failing; it will be tried again later"
        later = max(self.settings.max_poll, self._settle() if maybe_sent else 0.0)
        self._schedule(key, self.clock() + later, "submit")

    # -- reporting ---------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Counts and money for the progress display."""
        counts = Counter(r.state for r in self.jobs.values())
        counts[JobState.DONE] += self.saved_count
        return Snapshot(
            total=len(self.jobs) + self.saved_count,
            counts=counts,
            spent=self.saved_spent + sum(r.charged_cost or 0.0 for r in self.jobs.values()),
            in_flight_limit=self.pacer.limit,
            started=self.started,
            now=self.clock(),
            done_this_run=self.done_this_run,
        )

    def _outcome(self) -> Outcome:
        spent, reserved = self.ledger.money(self.batch)
        counts = Counter(r.state for r in self.jobs.values())
        counts[JobState.DONE] += self.saved_count
        error = self.abort or self._stop_error
        stopped = self.stop_new
        if self.abort and stopped is None:
            stopped = "auth" if isinstance(self.abort, AuthError) else "error"
        return Outcome(
            counts=counts,
            spent=spent,
            reserved=reserved,
            stopped=stopped,
            error=error,
            stuck=[f"{self.jobs[k].source or k}: {why}" for k, why in self.stuck.items()],
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

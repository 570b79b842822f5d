"""The worker pool: submit → poll → download, with every step in the ledger first.

One loop (``Worker.run``) owns the schedule: it starts submissions while there is room
under the in-flight limit, the submission pace and the budget; it starts polls for the
runs whose time has come (one heap of due times, not a sleeping task per run); and it
waits for whichever comes first, a finished step or the next due time.

The rule that makes it safe to kill at any instant: each step writes the ledger *before*
the action that depends on it (intent before action) and *right after* learning
anything (a run id, an output's hash).  A job found in ``submitting`` after a crash is
sent again only with the same idempotency key, inside the server's key window;
otherwise it is reconciled from the run history, never bought again blindly.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import retrying
from .client import FloraClient
from .config import Settings
from .errors import (
    AmbiguousCreate,
    ApiError,
    AuthError,
    FloraError,
    IdempotencyConflict,
    IdempotencyDuplicate,
    InsufficientCredits,
    LeaseLost,
    NotFound,
    RateLimited,
    ResponseRefused,
    ResultsError,
    TransportError,
    UploadError,
)
from .ledger import Ledger
from .naming import ext_for, render_output_name
from .results import ResultStore
from .types import JobKey, JobRecord, JobState, OutputRecord, RunInfo, RunInput, Technique
from .wire import classify_run_failure

log = logging.getLogger("flora_batch.worker")

Clock = Callable[[], float]
ProgressHook = Callable[["Snapshot"], None]
#: The upload stage's hook (``uploads.Uploader.resolve_inputs``): a job's inputs with its
#: upload placeholders swapped for asset URLs; None while a file is still uploading;
#: UploadError when one will not be ready in this run.
InputResolver = Callable[[JobRecord], "tuple[RunInput, ...] | None"]
#: Cluster mode (``cluster.py``): claim up to n more jobs from the shared ledger.
Refill = Callable[[int], list[JobRecord]]

_RESERVING = (JobState.SUBMITTING, JobState.RUNNING, JobState.DOWNLOADING)
_MAX_SUBMIT_TRIES = 8
_MAX_DOWNLOAD_ROUNDS = 4
_CHARGE_REREADS = 3
_INPUT_WAIT = 0.25  # seconds between looks at a job whose input files are still uploading
_REFILL_IDLE = 0.25  # seconds between claims that found nothing


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
        self._refill_at = 0.0
        self.stop_event = asyncio.Event()
        self.jobs: dict[JobKey, JobRecord] = {}
        self.queue: deque[JobKey] = deque()
        self.due: list[tuple[float, int, str, JobKey]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots: set[JobKey] = set()
        self.windows: dict[JobKey, list[tuple[float, float]]] = {}
        self.durations: dict[str, list[float]] = {}
        self.download_rounds: Counter[JobKey] = Counter()
        self.stuck: dict[JobKey, str] = {}
        self.unknown_since: dict[JobKey, float] = {}
        self.names: dict[str, JobKey] = {}  # output names taken, casefolded (``_claim``)
        self.committed = 0.0
        self.stop_new: str | None = None
        self.abort: FloraError | None = None
        self._stop_error: FloraError | None = None
        self.batch: str | None = None  # money is counted per batch: a ledger may hold several
        self.last_success = clock()
        self.started = clock()
        self.done_this_run = 0
        self._seq = itertools.count()

    # -- the loop ------------------------------------------------------------------

    async def run(self, jobs: Iterable[JobRecord]) -> Outcome:
        """Work every given job until done, failed, unresolved, or a stop."""
        self._load(list(jobs))
        deadline = self.started + self.settings.max_runtime if self.settings.max_runtime else None
        stopper = asyncio.ensure_future(self.stop_event.wait())
        last_progress = 0.0
        try:
            while not self.abort:
                now = self.clock()
                if self.stop_event.is_set() or (deadline and now >= deadline):
                    self.stop_new = "interrupted" if self.stop_event.is_set() else "runtime"
                    break
                if now - self.last_success > self.settings.outage_limit:
                    self.stop_new = "outage"
                    break
                self._top_up(now)
                self._start_submits(now)
                self._start_due(now)
                if not self.tasks and not self._waiting():
                    break
                if self.progress and now - last_progress >= 0.5:
                    self.progress(self.snapshot())
                    last_progress = now
                await asyncio.wait(
                    [*self.tasks, stopper],
                    timeout=self._sleep_for(now),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                self._reap()
        finally:
            stopper.cancel()
            await self._cancel_all()
        return self._outcome()

    def _waiting(self) -> bool:
        """Whether anything is left that a later wake-up could start."""
        return bool(self.due) or (bool(self.queue) and self.stop_new is None)

    def _sleep_for(self, now: float) -> float:
        wake = [self.due[0][0]] if self.due else []
        if self.queue and self.stop_new is None and len(self.slots) < self.pacer.limit:
            wake.append(self.pacer.ready_at())
        return max(0.01, min([*wake, now + 0.5]) - now)

    def _reap(self) -> None:
        for task in [t for t in self.tasks if t.done()]:
            self.tasks.discard(task)
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, LeaseLost) and self.refill is not None:
                log.warning("lost the lease: %s", exc)  # another worker has the job now
                self._release(JobKey(exc.key))
            elif exc is not None:
                raise exc  # a bug: surface it

    def _spawn(self, coro: object) -> None:
        self.tasks.add(asyncio.ensure_future(coro))  # type: ignore[call-overload]

    async def _cancel_all(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    # -- loading and scheduling -------------------------------------------------------

    def _load(self, jobs: list[JobRecord]) -> None:
        """Put each job where its ledger state says it belongs."""
        self.batch = jobs[0].batch if jobs else None
        spent, reserved = self.ledger.money(self.batch)
        self.committed = spent + reserved
        resumed: list[JobKey] = []
        for rec in jobs:
            self.jobs[rec.key] = rec
            self._claim_saved(rec)
            if rec.run_id is None and rec.submitted_at is not None:
                # An earlier process may have sent creates any time since the first one.
                self.windows[rec.key] = [(rec.submitted_at, self.clock())]
            if rec.run_id and rec.charged_cost is None and rec.state.terminal:
                self._schedule(rec.key, self.clock(), "charge")  # the bill came late
            if rec.state is JobState.PLANNED:
                self.queue.append(rec.key)
            elif rec.state is JobState.SUBMITTING:
                resumed.append(rec.key)
            elif rec.state is JobState.RUNNING:
                self.slots.add(rec.key)
                self._schedule(rec.key, self.clock(), "poll")
            elif rec.state is JobState.DOWNLOADING:
                self.slots.add(rec.key)
                self._spawn(self._download(rec.key))
            elif rec.state is JobState.NEEDS_RECONCILE:
                self._spawn(self._reconcile(rec.key))
            elif rec.state is JobState.DONE:
                self._check_done(rec)
        self.queue.extendleft(reversed(resumed))  # ambiguous ones first: they may be paid

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

    def _schedule(self, key: JobKey, when: float, kind: str) -> None:
        heapq.heappush(self.due, (when, next(self._seq), kind, key))

    def _start_due(self, now: float) -> None:
        while self.due and self.due[0][0] <= now:
            _, _, kind, key = heapq.heappop(self.due)
            if kind == "poll":
                self._spawn(self._poll(key))
            elif kind == "charge":
                self._spawn(self._reread_charge(key))
            elif kind == "download":
                self._spawn(self._download(key))
            else:
                self.queue.appendleft(key)

    def _start_submits(self, now: float) -> None:
        while self.queue and self.stop_new is None and len(self.slots) < self.pacer.limit:
            if self.pacer.ready_at() > now:
                return
            key = self.queue[0]
            rec = self.jobs[key]
            if not self._inputs_ready(key, now):
                continue
            quote = self._quote(rec)
            if rec.state is JobState.PLANNED and self._over_budget(quote):
                self.stop_new = "budget"
                return
            self.queue.popleft()
            if rec.state is JobState.PLANNED:
                self.committed += quote
            self.slots.add(key)
            self._spawn(self._submit(key, wait=self.pacer.took()))

    def _top_up(self, now: float) -> None:
        """Cluster mode: claim more jobs from the shared ledger while there is room."""
        if self.refill is None or self.stop_new is not None or self.queue or now < self._refill_at:
            return
        room = self.pacer.limit - len(self.slots)
        if room <= 0:
            return
        claimed = self.refill(room)
        self._refill_at = now + (0.0 if claimed else _REFILL_IDLE)
        if claimed:
            self._load(claimed)

    def _inputs_ready(self, key: JobKey, now: float) -> bool:
        """Whether the first queued job's input files are uploaded; if not, it waits unpaid.

        Waiting for uploads is not an outage: the upload stage bounds its own waits.
        """
        try:
            ready = self._inputs(self.jobs[key]) is not None
        except UploadError as exc:
            self.queue.popleft()
            self.stuck[key] = str(exc)
            return False
        if not ready:
            self.queue.popleft()
            self.last_success = max(self.last_success, now)
            self._schedule(key, now + _INPUT_WAIT, "submit")
        return ready

    def _inputs(self, rec: JobRecord) -> tuple[RunInput, ...] | None:
        """What the create sends: the job's inputs, placeholders resolved to asset URLs."""
        return rec.inputs if self.resolve_inputs is None else self.resolve_inputs(rec)

    def _quote(self, rec: JobRecord) -> float:
        if rec.quoted_cost is not None:
            return rec.quoted_cost
        tech = self.techniques.get(rec.technique)
        return tech.run_cost if tech else 0.0

    def _over_budget(self, quote: float) -> bool:
        return self.max_cost is not None and self.committed + quote > self.max_cost + 1e-9

    def _release(self, key: JobKey) -> None:
        self.slots.discard(key)

    def _update(self, rec: JobRecord) -> JobRecord:
        self.jobs[rec.key] = rec
        return rec

    # -- submit ------------------------------------------------------------------------

    async def _submit(self, key: JobKey, wait: float = 0.0) -> None:
        """Create the job's run: key committed first, repeated only with the same key."""
        if wait > 0:  # a slot reserved by the cluster-wide pacing
            await asyncio.sleep(wait)
        rec = self.jobs[key]
        maybe_sent = rec.state is JobState.SUBMITTING
        if maybe_sent and self._key_expired(rec):
            self._update(
                self.ledger.mark_needs_reconcile(
                    key, now=self.clock(), reason="idempotency key older than the server's window"
                )
            )
            self._release(key)
            await self._reconcile(key)
            return
        inputs = self._inputs(rec) or rec.inputs  # _start_submits saw them resolved
        if rec.state is JobState.PLANNED:
            rec = self._update(self.ledger.mark_submitting(key, now=self.clock()))
        for attempt in range(1, _MAX_SUBMIT_TRIES + 1):
            sent_at = self.clock()
            try:
                run = await self.client.create_run(rec.technique, inputs, rec.idempotency_key)
            except FloraError as exc:
                maybe_sent = maybe_sent or self._may_have_left(exc)
                self._note_window(key, sent_at)
                if not await self._create_failed(key, exc, attempt, maybe_sent):
                    return
                continue
            self._note_window(key, sent_at)
            self._created(key, run)
            return
        self._park(key, "the create request kept failing; it will be retried with the same key")

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

    def _key_expired(self, rec: JobRecord) -> bool:
        sent = rec.submitted_at
        return sent is not None and self.clock() - sent > self.settings.key_window * 0.95

    def _created(self, key: JobKey, run: RunInfo) -> None:
        self.last_success = self.clock()
        self.pacer.succeeded()
        rec = self._update(
            self.ledger.mark_running(key, run.run_id, now=self.clock(), request_id=run.request_id)
        )
        log.debug("submitted %s as %s", rec.source or key, run.run_id)
        self._after_poll(key, run)

    async def _create_failed(
        self, key: JobKey, exc: FloraError, attempt: int, maybe_sent: bool
    ) -> bool:
        """Record what a failed create means; True to try again with the same key."""
        now = self.clock()
        if isinstance(exc, RateLimited):
            pause = self.pacer.rate_limited(exc.retry_after)
            if not maybe_sent:
                self._requeue_unsent(key, f"rate limited (request-id {exc.request_id})")
                return False
            await asyncio.sleep(pause)
            return True
        if isinstance(exc, IdempotencyDuplicate | IdempotencyConflict):
            self._update(
                self.ledger.mark_needs_reconcile(
                    key, now=now, reason=str(exc), request_id=exc.request_id
                )
            )
            self._release(key)
            await self._reconcile(key)
            return False
        if exc.retryable:
            if attempt < _MAX_SUBMIT_TRIES:
                await asyncio.sleep(retrying.backoff(attempt, retrying.DEFAULT_POLICY, exc))
            return True
        self._create_refused(key, exc, maybe_sent)
        return False

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
        self.committed -= self._quote(self.jobs[key])
        self._release(key)

    def _requeue_unsent(
        self, key: JobKey, reason: str, *, requeue: bool = True, maybe_sent: bool = False
    ) -> None:
        """Nothing was created: give the reservation back and queue the job again."""
        if not maybe_sent:
            self._update(self.ledger.release_unsent(key, now=self.clock(), reason=reason))
            self.committed -= self._quote(self.jobs[key])
        self._release(key)
        if requeue:
            self.queue.appendleft(key)

    def _park(self, key: JobKey, reason: str) -> None:
        """Give up on a job for now without deciding anything; a later wake-up retries it."""
        self._release(key)
        self.stuck[key] = reason
        self._schedule(key, self.clock() + self.settings.max_poll, "submit")

    # -- poll --------------------------------------------------------------------------

    async def _poll(self, key: JobKey) -> None:
        rec = self.jobs[key]
        assert rec.run_id is not None
        try:
            run = await retrying.call(
                lambda: self.client.get_run(rec.technique, rec.run_id or ""),
                what=f"poll {rec.run_id}",
            )
        except AuthError as exc:
            self.abort = exc
            return
        except NotFound as exc:
            self.stuck[key] = (
                f"FLORA no longer knows run {rec.run_id} ({exc}); was the key changed?"
            )
            self._release(key)
            return
        except FloraError as exc:
            self.stuck[key] = f"polling kept failing: {exc}"
            self._schedule(key, self.clock() + self.settings.max_poll, "poll")
            return
        self.last_success = self.clock()
        self._after_poll(key, run)

    def _after_poll(self, key: JobKey, run: RunInfo) -> None:
        """Act on a run's status: schedule the next poll, download, or record the failure."""
        self.stuck.pop(key, None)
        if run.status == "completed":
            self._completed(key, run)
        elif run.status == "failed":
            self._run_failed(key, run)
        elif not self._unknown_too_long(key, run):
            self._schedule(key, self.clock() + self._next_poll_delay(key, run), "poll")

    def _unknown_too_long(self, key: JobKey, run: RunInfo) -> bool:
        """CONTRACT.md §4: an unknown status is not terminal, but the wait for it is bounded.

        After ``settings.unknown_status_limit`` seconds of nothing but unknown statuses
        the job is left as it is (its run is kept, never bought again) and reported; the
        next ``run`` polls it afresh.
        """
        if run.status in ("pending", "running"):
            self.unknown_since.pop(key, None)
            return False
        now = self.clock()
        if key not in self.unknown_since:
            self.unknown_since[key] = now
            log.warning("run %s: unknown status %r; still waiting", run.run_id, run.status)
        waited = now - self.unknown_since[key]
        if waited <= self.settings.unknown_status_limit:
            return False
        self.stuck[key] = (
            f"run {run.run_id} has reported the unknown status {run.status!r} for "
            f"{waited:.0f}s; it is kept (not bought again): run again later"
        )
        self._release(key)
        return True

    def _next_poll_delay(self, key: JobKey, run: RunInfo) -> float:
        """Poll near the expected end: extrapolate progress, or use durations seen before."""
        s = self.settings
        rec = self.jobs[key]
        elapsed = max(0.0, self.clock() - (rec.submitted_at or self.clock()))
        seen = sorted(self.durations.get(rec.technique, ()))
        if run.progress and 0 < run.progress < 100 and elapsed > 0:
            left = elapsed * (100 - run.progress) / run.progress
        elif seen:
            left = seen[len(seen) // 2] - elapsed
        else:
            left = max(s.min_poll, elapsed * 0.5)
        return min(max(left, s.min_poll), s.max_poll)

    def _completed(self, key: JobKey, run: RunInfo) -> None:
        rec = self.jobs[key]
        if rec.submitted_at and rec.submitted_at >= self.started:  # not across a restart's gap
            self.durations.setdefault(rec.technique, []).append(self.clock() - rec.submitted_at)
        if not run.outputs:
            self._run_failed(
                key, run, code="no_outputs", message="FLORA said completed but gave no outputs"
            )
            return
        self._settle_charge(rec, run.charged_cost)
        self._update(
            self.ledger.mark_downloading(
                key, run.outputs, now=self.clock(), charged_cost=run.charged_cost
            )
        )
        self._spawn(self._download(key))

    def _run_failed(
        self, key: JobKey, run: RunInfo, *, code: str | None = None, message: str | None = None
    ) -> None:
        rec = self.jobs[key]
        code = code or run.error_code or "unknown"
        message = message or run.error_message or ""
        category = classify_run_failure(code, message) if code != "no_outputs" else "retryable"
        self._settle_charge(rec, run.charged_cost)
        self._update(
            self.ledger.mark_failed(
                key,
                code=code,
                message=message,
                category=category,
                now=self.clock(),
                charged_cost=run.charged_cost,
            )
        )
        if run.charged_cost is None:
            self._schedule(key, self.clock() + self.settings.min_poll, "charge")
        self._release(key)
        log.warning("failed %s: %s %s", rec.source or key, code, message)

    def _settle_charge(self, rec: JobRecord, charged: float | None) -> None:
        if charged is not None and rec.charged_cost is None:
            self.committed += charged - self._quote(rec)

    async def _reread_charge(self, key: JobKey, tries: int = _CHARGE_REREADS) -> None:
        """Charges can arrive after the run ends (CONTRACT.md §4): read them again, briefly."""
        rec = self.jobs[key]
        for _ in range(tries):
            try:
                run = await self.client.get_run(rec.technique, rec.run_id or "")
            except FloraError:
                return
            if run.charged_cost is not None:
                self._settle_charge(self.jobs[key], run.charged_cost)
                self.ledger.set_charged(key, run.charged_cost)
                self._update(self.ledger.get(key))
                return
            await asyncio.sleep(self.settings.min_poll)

    # -- download ----------------------------------------------------------------------

    async def _download(self, key: JobKey) -> None:
        """Fetch every output not yet on disk; a job is done only when all are verified."""
        self.download_rounds[key] += 1
        try:
            for index, out in enumerate(self.ledger.get(key).outputs):
                if not out.sha256:
                    await self._download_one(key, index, out)
        except ResultsError as exc:
            self.abort = exc
            return
        except FloraError as exc:
            self._download_trouble(key, exc)
            return
        rec = self._update(self.ledger.mark_done(key, now=self.clock()))
        self._release(key)
        self.done_this_run += 1
        self.last_success = self.clock()
        if rec.charged_cost is None:
            self._schedule(key, self.clock() + self.settings.min_poll, "charge")
        log.info("done %s", rec.source or key)

    def _download_trouble(self, key: JobKey, exc: FloraError) -> None:
        if self.download_rounds[key] >= _MAX_DOWNLOAD_ROUNDS:
            self.stuck[key] = f"download kept failing: {exc}"
            self._release(key)
            return
        self._schedule(key, self.clock() + self.settings.min_poll, "download")

    async def _download_one(self, key: JobKey, index: int, out: OutputRecord) -> None:
        rec = self.jobs[key]
        if out.type == "text":
            rel = self._claim(key, self._name(rec, out, index, None), out, None)
            saved = self.results.write_text(out.url, rel)
            path, size, sha, ctype = saved.path, saved.size, saved.sha256, saved.content_type
        else:
            url = out.url
            for refresh in range(3):
                tmp = self.results.temp_path()
                try:
                    got = await retrying.call(
                        lambda u=url, t=tmp: self.client.download(  # type: ignore[misc]
                            u, t, max_bytes=self.settings.max_download_bytes, output_type=out.type
                        ),
                        what=f"download {out.output_id} of {rec.run_id}",
                    )
                except ApiError as exc:
                    self.results.discard(tmp)
                    if exc.status not in (403, 404, 410) or refresh == 2:
                        raise
                    url = await self._fresh_url(key, out.output_id)
                    continue
                except BaseException:
                    self.results.discard(tmp)
                    raise
                name = self._claim(key, self._name(rec, out, index, got.content_type), out, tmp)
                path = self.results.commit(tmp, name)
                size, sha, ctype = got.size, got.sha256, got.content_type
                break
        self.ledger.mark_output_saved(
            key,
            out.output_id,
            path=str(path),
            size=size,
            sha256=sha,
            content_type=ctype,
            now=self.clock(),
        )

    def _claim(self, key: JobKey, name: str, out: OutputRecord, tmp: Path | None) -> str:
        """``name``, unless another job's output has it (ignoring case): then refuse.

        Plan time checks names made with the technique's slot ids; the output ids of a
        run come from FLORA, so a clash they cause is caught here and nothing is
        overwritten.  Names of outputs saved before this run are claimed in ``_load``.
        """
        owner = self.names.setdefault(name.casefold(), key)
        if owner == key:
            return name
        if tmp is not None:
            self.results.discard(tmp)
        other = self.jobs[owner].source if owner in self.jobs else owner
        raise ResponseRefused(
            f"output {out.output_id!r} would be saved as {name!r}, which is {other}'s file "
            "already: not overwritten (make output.name unique per row)"
        )

    def _claim_saved(self, rec: JobRecord) -> None:
        for index, out in enumerate(rec.outputs):
            if out.sha256:
                name = self._name(rec, out, index, out.content_type)
                self.names.setdefault(name.casefold(), rec.key)

    async def _fresh_url(self, key: JobKey, output_id: str) -> str:
        """Output URLs expire: poll the run again for fresh ones."""
        rec = self.jobs[key]
        run = await retrying.call(
            lambda: self.client.get_run(rec.technique, rec.run_id or ""), what="refresh URLs"
        )
        self.ledger.refresh_output_urls(key, run.outputs)
        fresh = next((o.url for o in run.outputs if o.output_id == output_id), None)
        if fresh is None:
            raise NotFound(f"run {rec.run_id} no longer lists output {output_id}")
        return fresh

    def _name(self, rec: JobRecord, out: OutputRecord, index: int, ctype: str | None) -> str:
        return render_output_name(
            rec.output_name,
            {k: str(v) for k, v in rec.row.items()},
            technique=rec.technique,
            output_id=out.output_id,
            ext=ext_for(out.type, ctype),
            index=index,
            row_number=rec.row_index + 1,
            key=rec.key.split(":")[-1][:12],
        )

    # -- reconcile ---------------------------------------------------------------------

    async def _reconcile(self, key: JobKey) -> None:
        """Find the run a duplicate key points at, from the run history; else leave it to the user.

        A candidate is a run of the same technique, unknown to the ledger, created while
        one of this job's creates was in the air.  It is adopted only if it is the
        only candidate for this job and no other job waiting for reconciliation could
        claim it: anything less than certain becomes ``unresolved``.
        """
        rec = self.jobs[key]
        tech = self.techniques.get(rec.technique)
        windows = self.windows.get(key) or [(rec.submitted_at or 0.0, self.clock())]
        try:
            runs = await retrying.call(
                lambda: self.client.technique_runs(
                    tech.technique_id if tech else f"tech_{rec.technique}",
                    newer_than=(min(w[0] for w in windows) - 60) * 1000,
                ),
                what="list technique runs",
            )
        except FloraError as exc:
            self.stuck[key] = f"could not read the run history to reconcile: {exc}"
            return
        peers = self._peers(rec)
        known = {r.run_id for r in peers.values() if r.run_id}
        mine = self._candidates(runs, windows, known)
        rivals = {
            c
            for other, r in peers.items()
            if other != key and r.technique == rec.technique and self._may_own_unknown_run(r)
            for c in self._candidates(runs, self._sent_between(r), known)
        }
        if len(mine) == 1 and not (mine & rivals):
            run_id = next(iter(mine))
            self._update(self.ledger.mark_running(key, run_id, now=self.clock()))
            self.slots.add(key)
            self._schedule(key, self.clock(), "poll")
            log.info("reconciled %s with %s", rec.source or key, run_id)
            return
        reason = (
            f"{len(mine)} candidate run(s) in the run history for {rec.technique} "
            f"between its first send and now ({', '.join(sorted(mine)) or 'none'}); "
            "check them in FLORA, then run again with --resubmit-unresolved to buy it again"
        )
        self._update(self.ledger.mark_unresolved(key, now=self.clock(), reason=reason))

    def _peers(self, rec: JobRecord) -> dict[JobKey, JobRecord]:
        """Jobs whose runs a reconciliation must not take: in cluster mode the whole batch
        in the shared ledger (other workers' jobs too), else this worker's own."""
        if self.refill is None:
            return self.jobs
        return {r.key: r for r in self.ledger.jobs(batch=rec.batch)}

    @staticmethod
    def _may_own_unknown_run(rec: JobRecord) -> bool:
        """Whether one of this job's creates may have made a run the ledger does not know."""
        return (
            rec.run_id is None and rec.submitted_at is not None and rec.state is not JobState.FAILED
        )

    def _sent_between(self, rec: JobRecord) -> list[tuple[float, float]]:
        """When this job's creates may have been in the air: first send to its last move, or now."""
        settled = rec.state in (JobState.NEEDS_RECONCILE, JobState.UNRESOLVED)
        end = rec.updated_at if settled and rec.updated_at else self.clock()
        return [(rec.submitted_at or 0.0, end)]

    @staticmethod
    def _candidates(
        runs: list[RunInfo], windows: list[tuple[float, float]], known: set[str], slack: float = 2.0
    ) -> set[str]:
        out = set()
        for run in runs:
            created = (run.created_at or 0) / 1000.0
            if run.run_id in known:
                continue
            if any(start - slack <= created <= end + slack for start, end in windows):
                out.add(run.run_id)
        return out

    # -- reporting ---------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Counts and money for the progress display."""
        counts = Counter(r.state for r in self.jobs.values())
        return Snapshot(
            total=len(self.jobs),
            counts=counts,
            spent=sum(r.charged_cost or 0.0 for r in self.jobs.values()),
            in_flight_limit=self.pacer.limit,
            started=self.started,
            now=self.clock(),
            done_this_run=self.done_this_run,
        )

    def _outcome(self) -> Outcome:
        spent, reserved = self.ledger.money(self.batch)
        counts = Counter(r.state for r in self.jobs.values())
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
        )

"""The create path: a job's paid run made once, whatever is lost on the way.

Every rule that keeps one job to one run lives here (docs/design.md, "When the answer to
a create is lost"):

* intent before action: the job is ``submitting``, durably, before its create leaves,
  and every repeat of it is recorded first (``note_send``);
* a create whose answer was lost is repeated only with the job's key, only once the lost
  one cannot still be running at FLORA (a settle after it left), only while the key is
  inside FLORA's window with room for the request, and (cluster) only while this worker
  holds the job's lease;
* one create at a time per technique whose run is not on disk (``gates``), so a lost
  create's run can be told apart in the run history (``reconcile.py``);
* what a failure *means* (nothing created, maybe created, the key proven) decides the
  next state: back to ``planned``, repeat, reconcile, fail or stop.

``Creates.send`` returns what the create came to (``Sent``); the loop schedules the rest.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

from .. import retrying
from ..config import Settings
from ..errors import (
    AmbiguousCreate,
    ApiError,
    AuthError,
    FloraError,
    IdempotencyConflict,
    IdempotencyDuplicate,
    InsufficientCredits,
    RateLimited,
    TransportError,
)
from ..ledger import Ledger
from ..remote.client import FloraClient
from ..types import JobKey, JobRecord, JobState, RunInfo, RunInput
from .budget import Budget
from .reconcile import Sends
from .state import Board, Clock, Pacer, ServerClock, committed, settle_seconds

log = logging.getLogger("flora_batch.worker")

_MAX_SUBMIT_TRIES = 8
#: ``mark_needs_reconcile`` codes that prove FLORA holds the job's key (a run exists).
PROVING_CODES = frozenset({"idempotency_duplicate", "idempotency_conflict"})
_EXPIRED = "its idempotency key may have been forgotten by FLORA (older than its window)"
#: Refusals that stop the batch rather than say anything about one job's create.
_STOPPING = (AuthError, InsufficientCredits, RateLimited)

Kind = Literal["running", "requeue", "reconcile", "park", "failed", "stop"]


@dataclass(frozen=True)
class Sent:
    """What a create came to; the ledger knows it already.

    ``running``: the run is recorded (``run``).  ``requeue``: nothing was created, the
    job is ``planned`` again.  ``reconcile``: a run may exist, its id unknown.  ``park``:
    the create kept failing; try again at ``again_at``.  ``failed``: FLORA refused the
    inputs.  ``stop``: the batch must stop buying (``stop`` says why, ``error`` what).
    """

    kind: Kind
    run: RunInfo | None = None
    again_at: float | None = None
    stop: str | None = None
    error: FloraError | None = None


class Creates:
    """The worker's create step, and the state that keeps each job to one run."""

    def __init__(
        self,
        *,
        client: FloraClient,
        ledger: Ledger,
        board: Board,
        sends: Sends,
        budget: Budget,
        pacer: Pacer,
        server_clock: ServerClock,
        settings: Settings,
        clock: Clock,
    ) -> None:
        self.client, self.ledger, self.board, self.sends = client, ledger, board, sends
        self.budget, self.pacer, self.server_clock = budget, pacer, server_clock
        self.settings, self.clock = settings, clock
        #: One create at a time per technique whose run id is not yet on disk: the jobs of
        #: each technique whose create may have made a run nobody has identified yet.
        #: While a technique's set is not empty, no other job of it is sent, so a run
        #: found in the history in one job's window of sends can only be that job's.
        self.gates: dict[str, set[JobKey]] = {}
        #: Jobs marked ``submitting`` whose create has not left yet (a clean stop releases them).
        self.unsent: set[JobKey] = set()
        #: Woken when a gate opens (the loop may start a create it held back).
        self.on_open: asyncio.Event | None = None

    # -- the gates ----------------------------------------------------------------------

    def hold(self, key: JobKey) -> None:
        """``key``'s create may make a run nobody has identified yet: hold its technique."""
        self.gates.setdefault(self.board[key].technique, set()).add(key)

    def open(self, key: JobKey) -> None:
        """``key``'s create is settled on disk (a run id, or surely none): free its technique."""
        rec = self.board.jobs.get(key)
        holders = self.gates.get(rec.technique) if rec is not None else None
        if rec is not None and holders is not None:
            holders.discard(key)
            if not holders:
                del self.gates[rec.technique]
            if self.on_open is not None:
                self.on_open.set()

    def may_leave(self, rec: JobRecord) -> bool:
        """Whether ``rec``'s create may leave: no other job of its technique holds it."""
        holders = self.gates.get(rec.technique)
        return not holders or rec.key in holders

    # -- one job's create ---------------------------------------------------------------

    async def send(self, key: JobKey, inputs: tuple[RunInput, ...], wait: float = 0.0) -> Sent:
        """Create the job's run with ``inputs``: key committed first, repeated only with
        the same key, only inside its window, only while leased.

        Raises:
            LeaseLost: (cluster) another worker holds the job now; nothing was sent.
        """
        if wait > 0:  # a slot reserved by the cluster-wide pacing
            await asyncio.sleep(wait)
        rec = self.board[key]
        maybe_sent = rec.state is JobState.SUBMITTING
        if rec.state is JobState.PLANNED:
            rec = self.board.update(
                self.ledger.mark_submitting(key, now=self.clock(), grouped=True)
            )
            self.unsent.add(key)  # until the create leaves: a clean stop gives it back
            await committed(self.ledger)  # on disk before the create may leave
            self.unsent.discard(key)
        not_before = 0.0
        for attempt in range(1, _MAX_SUBMIT_TRIES + 1):
            if self.clock() < not_before:  # the last create may still be running at FLORA
                await asyncio.sleep(not_before - self.clock())
            if maybe_sent and not self._key_alive(rec):
                return self._to_reconcile(key, "key_expired", _EXPIRED)
            self.ledger.check_lease(key, now=self.clock())  # LeaseLost: another has it
            if attempt > 1 or maybe_sent:  # a send again: on disk before it leaves
                self.ledger.note_send(key, now=self.clock(), attempt=attempt, grouped=True)
                await committed(self.ledger)
            sent_at = self.clock()
            try:
                run = await self._fly(key, rec, inputs)
            except FloraError as exc:
                if self._may_have_left(exc):  # only such a send can have made a run
                    maybe_sent = True
                    self._note_window(key, sent_at)
                if isinstance(exc, AmbiguousCreate) and exc.timed_out:
                    not_before = sent_at + settle_seconds(self.settings)
                outcome = await self._failed(key, exc, attempt, maybe_sent)
                if outcome is None:
                    continue
                return outcome
            self._note_window(key, sent_at)
            self.server_clock.measured(run.created_at, sent_at, self.clock())
            self.pacer.succeeded()
            self.record_run(key, run)
            return Sent("running", run=run)
        return self._park(key, maybe_sent)

    async def _fly(self, key: JobKey, rec: JobRecord, inputs: tuple[RunInput, ...]) -> RunInfo:
        """One create request, in its own task: a stop waits it out (``wind_down``) rather
        than cutting it off with its fate unknown."""
        flight = asyncio.ensure_future(
            self.client.create_run(rec.technique, inputs, rec.idempotency_key)
        )
        self.sends.flights[key] = flight
        try:
            return await asyncio.shield(flight)
        finally:
            if flight.done():
                self.sends.flights.pop(key, None)

    def record_run(self, key: JobKey, run: RunInfo) -> None:
        """The create answered with ``run``: the job is running, its technique free.

        The technique is free for its next create: that create waits for the commit of
        its own ``submitting``, which is this one's or a later one, so this run id is on
        disk before another create of the technique can leave.
        """
        rec = self.board.update(
            self.ledger.mark_running(key, run.run_id, now=self.clock(), request_id=run.request_id)
        )
        self.open(key)
        log.debug("submitted %s as %s", rec.source or key, run.run_id)

    @staticmethod
    def _may_have_left(exc: FloraError) -> bool:
        """Whether FLORA may have created the run despite this error."""
        if isinstance(exc, AmbiguousCreate):
            return True
        if isinstance(exc, ApiError):
            return exc.status >= 500
        return not isinstance(exc, TransportError)  # connect errors never left

    def _note_window(self, key: JobKey, sent_at: float) -> None:
        self.sends.windows.setdefault(key, []).append((sent_at, self.clock()))

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

    async def _failed(
        self, key: JobKey, exc: FloraError, attempt: int, maybe_sent: bool
    ) -> Sent | None:
        """What a failed create means; None to try again with the same key."""
        if isinstance(exc, RateLimited):
            pause = self.pacer.rate_limited(exc.retry_after)
            if not maybe_sent:
                return self._unsent(key, f"rate limited (request-id {exc.request_id})")
            await asyncio.sleep(pause)
            return None
        if isinstance(exc, IdempotencyDuplicate | IdempotencyConflict):
            self.sends.proven.add(key)
            code = exc.code or "idempotency_duplicate"
            return self._to_reconcile(key, code, str(exc), exc.request_id)
        if exc.retryable:
            if attempt < _MAX_SUBMIT_TRIES:
                await asyncio.sleep(retrying.backoff(attempt, retrying.DEFAULT_POLICY, exc))
            return None
        if maybe_sent and isinstance(exc, ApiError) and not isinstance(exc, _STOPPING):
            # FLORA refused a repeat of a create that may have landed: the first one's run
            # may exist, and be paid for; look for it instead of failing the job.
            reason = f"FLORA refused a repeat of a create that may have landed: {exc}"
            return self._to_reconcile(key, "retry_refused", reason, exc.request_id)
        return self._refused(key, exc, maybe_sent)

    def _to_reconcile(
        self, key: JobKey, code: str, reason: str, request_id: str | None = None
    ) -> Sent:
        """A run may exist for the job's key, its id unknown: look for it in the history."""
        self.board.update(
            self.ledger.mark_needs_reconcile(
                key, now=self.clock(), reason=reason, request_id=request_id, code=code
            )
        )
        return Sent("reconcile")

    def _refused(self, key: JobKey, exc: FloraError, maybe_sent: bool) -> Sent:
        """A definite no: nothing was created by this request."""
        if isinstance(exc, InsufficientCredits | AuthError):
            if not maybe_sent:
                self._release_unsent(key, str(exc))
            stop = "credits" if isinstance(exc, InsufficientCredits) else "auth"
            return Sent("stop", stop=stop, error=exc)
        code = exc.code if isinstance(exc, ApiError) else type(exc).__name__
        self.board.update(
            self.ledger.mark_failed(
                key, code=code or "refused", message=str(exc), category="input", now=self.clock()
            )
        )
        self.budget.release(key)
        self.open(key)
        return Sent("failed", error=exc)

    def _unsent(self, key: JobKey, reason: str) -> Sent:
        """Nothing was created: the job is ``planned`` again, to be queued again."""
        self._release_unsent(key, reason)
        return Sent("requeue")

    def _release_unsent(self, key: JobKey, reason: str) -> None:
        self.board.update(self.ledger.release_unsent(key, now=self.clock(), reason=reason))
        self.budget.release(key)
        self.open(key)

    def _park(self, key: JobKey, maybe_sent: bool) -> Sent:
        """The create kept failing: give up on it for now, and try again later.

        A job none of whose creates can have left (each failed to connect) goes back to
        ``planned``: nothing was sent, so it is never reconciled (it could only adopt
        someone else's run).  Otherwise it stays ``submitting``, its technique held, and
        is sent again with its key later.
        """
        if not maybe_sent:
            self._release_unsent(key, "could not reach FLORA")
        self.board.stuck[key] = "the create request kept failing; it will be tried again later"
        later = max(self.settings.max_poll, settle_seconds(self.settings) if maybe_sent else 0.0)
        return Sent("park", again_at=self.clock() + later)

    # -- a stop -------------------------------------------------------------------------

    async def wind_down(self) -> None:
        """A clean stop: creates in the air are waited out (at most a settle) and their runs
        recorded; jobs whose create never left go back to ``planned``: no job is left
        with a create whose fate nobody knows (a cluster worker hands its jobs back next)."""
        for key in self.unsent:  # stopped before its create left: nothing to wait out
            if self.board[key].state is JobState.SUBMITTING:
                reason = "stopped before its create was sent"
                self.board.update(self.ledger.release_unsent(key, now=self.clock(), reason=reason))
        self.unsent.clear()
        flights = dict(self.sends.flights)
        if flights:
            await asyncio.wait(flights.values(), timeout=settle_seconds(self.settings))
        for key, flight in flights.items():
            if not flight.done():
                flight.cancel()  # its job stays submitting: resent only after a settle
                continue
            run = None if flight.cancelled() or flight.exception() else flight.result()
            if run is not None and self.board[key].state is JobState.SUBMITTING:
                self.record_run(key, run)
        self.sends.flights.clear()

    def abandon(self) -> None:
        """The process "dies" here: the creates in the air are cut off, nothing recorded."""
        for flight in self.sends.flights.values():
            flight.cancel()

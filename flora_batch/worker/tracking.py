"""Following a run after its create: poll it, act on its status, settle its bill.

The worker polls each run when ``polling.next_poll_delay`` says it should be near its
end; a ``completed`` answer means its outputs are fetched now (``Polled.fetch``), a
``failed`` one records the failure, anything else schedules the next poll.  An unknown
status is not terminal, but the wait for it is bounded.  Charges may arrive after the end
(CONTRACT.md §4): they are read again (``reread_charge``).

A poll is one request.  On a retryable error (5xx, 429, transport) it gives its slot
back (the loop has ``_POLLS_AT_ONCE`` of them for every run) and the run waits its
backoff in the poll heap, counted in a ``retrying.Streak``: 24 runs answering 5xx must
not stall the polls of thousands of others.  A 429 is the workspace's limit, not the
run's: it also halves the in-flight limit and pauses creates and polls alike
(``Pacer.rate_limited``).  When the policy is spent the run is reported stuck and polled
again ``max_poll`` later; FLORA answering nothing at all for ``outage_limit`` seconds
still stops the batch (``Pulse``).  404s in a row make the run lost (``mark_lost``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass

from .. import retrying
from ..config import Settings
from ..errors import AuthError, FloraError, NotFound, RateLimited
from ..ledger import Ledger
from ..remote.client import FloraClient
from ..types import JobKey, JobRecord, JobState, RunInfo
from ..wire import classify_run_failure
from . import polling
from .budget import Budget
from .polling import Learned
from .state import Agenda, Board, Clock, Pacer, Pulse, ServerClock

log = logging.getLogger("flora_batch.worker")

#: Seconds a late bill is waited for under a cap, re-read at growing intervals (CONTRACT §4).
_CHARGE_PATIENCE = 120.0
#: Polls answered 404 in a row before the run counts as lost (``mark_lost``).
_LOST_AFTER = 3
#: Seconds a poll may take before it counts as a failure (retried after its backoff): a
#: poll holds one of the worker's few poll slots while it waits, so it must not hang for
#: the client's whole timeout.  A GET of a run answers in well under a second.
POLL_TIMEOUT = 20.0


@dataclass(frozen=True)
class Polled:
    """What an answer about a run asks of the loop (anything else is done already: the
    next poll scheduled, the failure recorded, the job reported stuck)."""

    fetch: bool = False  # the run completed: fetch its outputs now
    fresh: RunInfo | None = None  # its one output, not recorded yet (``finish_run``)
    abort: FloraError | None = None  # stop the batch (the key is refused)


class Poller:
    """The worker's poll step: one run at a time, its answer turned into the next step."""

    def __init__(
        self,
        *,
        client: FloraClient,
        ledger: Ledger,
        board: Board,
        agenda: Agenda,
        pacer: Pacer,
        pulse: Pulse,
        budget: Budget,
        learned: Learned,
        server_clock: ServerClock,
        settings: Settings,
        clock: Clock,
    ) -> None:
        self.client, self.ledger, self.board, self.agenda = client, ledger, board, agenda
        self.pacer, self.pulse, self.budget = pacer, pulse, budget
        self.learned, self.server_clock = learned, server_clock
        self.settings, self.clock = settings, clock
        #: The runs whose last polls failed, with their failures (gone at an answer).
        self.streaks: dict[JobKey, retrying.Streak] = {}
        #: Since when each run has reported only an unknown status.
        self.unknown_since: dict[JobKey, float] = {}
        #: 404s in a row on a job's polls.
        self.not_found: Counter[JobKey] = Counter()

    async def poll(self, key: JobKey) -> Polled:
        """Ask FLORA once how the job's run is doing; its answer decides the next step."""
        rec = self.board[key]
        assert rec.run_id is not None
        try:
            run = await self.client.get_run(
                rec.technique, rec.run_id, timeout=min(self.settings.timeout, POLL_TIMEOUT)
            )
        except FloraError as exc:
            return self._failed_poll(key, exc)
        self.streaks.pop(key, None)
        self.not_found.pop(key, None)
        self.pulse.beat(self.clock())
        return self.answered(key, run)

    def _failed_poll(self, key: JobKey, exc: FloraError) -> Polled:
        """A poll failed: stop the batch, count a 404, or poll again after its backoff."""
        if isinstance(exc, AuthError):
            return Polled(abort=exc)
        if isinstance(exc, NotFound):
            self._not_found(key, exc)
            return Polled()
        if isinstance(exc, RateLimited):  # FLORA's limit is the workspace's: all slow down
            self.pacer.rate_limited(exc.retry_after)
        now = self.clock()
        streak = self.streaks.setdefault(key, retrying.Streak())
        run_id = self.board[key].run_id
        wait = streak.failed(exc, what=f"poll {run_id}", now=now, at_least=self.settings.min_poll)
        if wait is None:  # not retryable, or the policy is spent: a fresh streak later
            del self.streaks[key]
            self.board.stuck[key] = f"polling kept failing: {exc}"
            self.agenda.at(key, now + self.settings.max_poll, "poll")
        else:
            self.agenda.at(key, now + wait, "poll")
        return Polled()

    def _not_found(self, key: JobKey, exc: FloraError) -> None:
        """FLORA answered 404 for a run it made (CONTRACT.md §4: the key's workspace may
        have changed).  A few in a row, spaced out, and the job is ``unresolved`` with its
        run kept (``mark_lost``): the next ``run`` polls it again, and the user may buy it
        again with ``--resubmit-unresolved``.  Never left "running" for ever."""
        self.streaks.pop(key, None)
        self.not_found[key] += 1
        rec = self.board[key]
        if self.not_found[key] < _LOST_AFTER:
            wait = max(self.settings.min_poll, 2.0) * self.not_found[key]
            self.agenda.at(key, self.clock() + wait, "poll")
            return
        del self.not_found[key]
        request_id = getattr(exc, "request_id", None)
        request = f" (request-id {request_id})" if request_id else ""
        reason = (
            f"FLORA answers 404 for its run {rec.run_id}{request}: it no longer shows the run "
            "to this API key (was FLORA_API_KEY changed to another workspace's?). Run again "
            "with the key that created it to fetch its outputs; --resubmit-unresolved buys "
            "it again (it may then be paid twice)"
        )
        self.board.update(self.ledger.mark_lost(key, now=self.clock(), reason=reason))
        self.board.stuck.pop(key, None)
        self.board.release(key)
        log.warning("lost %s: %s", rec.source or key, reason)

    def answered(self, key: JobKey, run: RunInfo) -> Polled:
        """Act on a run's status (a poll's answer, or a create's): schedule the next poll,
        record the failure, or ask for its outputs to be fetched now."""
        self.board.stuck.pop(key, None)
        if run.status == "completed":
            return self._completed(key, run)
        if run.status == "failed":
            self._run_failed(key, run)
        elif not self._unknown_too_long(key, run):
            self.agenda.at(key, self.clock() + self._next_poll_delay(key, run), "poll")
        return Polled()

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
        self.board.stuck[key] = (
            f"run {run.run_id} has reported the unknown status {run.status!r} for "
            f"{waited:.0f}s; it is kept (not bought again): run again later"
        )
        self.board.release(key)
        return True

    def _next_poll_delay(self, key: JobKey, run: RunInfo) -> float:
        """Poll near the expected end (``polling.next_poll_delay``)."""
        rec = self.board[key]
        typical = self.learned.typical(rec.technique)
        offset = self.server_clock.for_run(rec, run)
        return polling.next_poll_delay(run, rec, typical, self.settings, self.clock(), offset)

    def _completed(self, key: JobKey, run: RunInfo) -> Polled:
        """A run completed: its outputs are fetched now.

        Several outputs are recorded first (``downloading``).  A single one is recorded
        together with its file by ``finish_run`` (``Downloader``): one commit less per
        job, and the ledger still has the run, so a crash before that commit only means
        polling the run again.
        """
        rec = self.board[key]
        self.learned.learn_run(rec.technique, run)
        if not run.outputs:
            message = "FLORA said completed but gave no outputs"
            self._run_failed(key, run, code="no_outputs", message=message)
            return Polled()
        self.bill(key, run.charged_cost)
        if len(run.outputs) == 1:
            return Polled(fetch=True, fresh=run)
        self.board.update(
            self.ledger.mark_downloading(
                key, run.outputs, now=self.clock(), charged_cost=run.charged_cost
            )
        )
        return Polled(fetch=True)

    def _run_failed(
        self, key: JobKey, run: RunInfo, *, code: str | None = None, message: str | None = None
    ) -> None:
        rec = self.board[key]
        code = code or run.error_code or "unknown"
        message = message or run.error_message or ""
        category = classify_run_failure(code, message) if code != "no_outputs" else "retryable"
        self.bill(key, run.charged_cost, failed=True)
        self.board.update(
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
            self.agenda.at(key, self.clock() + self.settings.min_poll, "charge")
        self.board.release(key)
        log.warning("failed %s: %s %s", rec.source or key, code, message)

    def bill(self, key: JobKey, charged: float | None, *, failed: bool = False) -> None:
        """A bill arrived for ``key``'s run: it replaces the run's hold in the budget."""
        if charged is None or not self.budget.holds(key):
            return  # no news, or a bill already counted
        informative = not failed or charged > 0
        self.budget.billed(key, self.board[key].technique, charged, informative=informative)

    async def reread_charge(self, key: JobKey) -> bool:
        """Charges can arrive after the run ends (CONTRACT.md §4): read them again, less
        and less often; the run stays reserved meanwhile.

        Returns:
            False when the bill did not come and, under a cap, no bill of the job's
            technique is known: none of its runs may be bought in this run.
        """
        rec = self.board[key]
        waited, wait = 0.0, self.settings.min_poll
        # Under a cap an unknown bill holds money back: worth waiting for.  Without one,
        # a few looks; the next run reads it again (the ledger keeps it reserved).
        patience = _CHARGE_PATIENCE if self.budget.cap is not None else 3 * wait
        while waited <= patience:
            try:
                run = await self.client.get_run(rec.technique, rec.run_id or "")
            except FloraError:
                run = None
            if run is not None and run.charged_cost is not None:
                failed = self.board[key].state is JobState.FAILED
                self.bill(key, run.charged_cost, failed=failed)
                self.board.update(
                    self.ledger.set_charged(key, run.charged_cost, now=self.clock())
                )
                return True
            await asyncio.sleep(wait)
            waited += wait
            wait = min(wait * 2, self.settings.max_poll)
        return self.budget.cap is None or rec.technique in self.budget.highest


def lost_bill_note(rec: JobRecord) -> str:
    """What the operator reads when a technique's first bill never came under a cap."""
    return (
        f"no bill of {rec.technique} has arrived yet (run {rec.run_id}): under max_cost "
        "no more of its runs are bought until one has; run the same command later"
    )

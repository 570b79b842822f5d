"""Following a run after its create: poll it, act on its status, settle its bill.

The worker polls each run when ``polling.next_poll_delay`` says it should be near its
end; a ``completed`` answer starts the download of its outputs, a ``failed`` one
records the failure, anything else schedules the next poll.
An unknown status is not terminal, but the wait for it is bounded.  Charges may arrive
after the end (CONTRACT.md §4): they are read again, briefly.

A poll is one request.  On a retryable error (5xx, 429, transport) it gives its slot
back (the worker has ``_POLLS_AT_ONCE`` of them for every run) and the run waits its
backoff in the poll heap, counted in a ``retrying.Streak``: 24 runs answering 5xx must
not stall the polls of thousands of others.  A 429 is the workspace's limit, not the
run's: it also halves the in-flight limit and pauses creates and polls alike
(``Pacer.rate_limited``), as a 429 on a create does.  When the policy is spent the run is
reported stuck and polled again ``max_poll`` later; FLORA answering nothing at all
for ``outage_limit`` seconds still stops the batch (``last_success``).
"""

from __future__ import annotations

import asyncio
import logging

from .. import retrying
from ..errors import AuthError, FloraError, NotFound, RateLimited
from ..types import JobKey, JobRecord, JobState, RunInfo
from ..wire import classify_run_failure
from . import polling
from .downloads import Downloads

log = logging.getLogger("flora_batch.worker")

#: Seconds a late bill is waited for, re-read at growing intervals (CONTRACT.md §4).
_CHARGE_PATIENCE = 120.0
#: Polls answered 404 in a row before the run counts as lost (``mark_lost``).
_LOST_AFTER = 3
#: Seconds a poll may take before it counts as a failure (retried after its backoff): a
#: poll holds one of the worker's few poll slots while it waits, so it must not hang for
#: the client's whole timeout.  A GET of a run answers in well under a second.
POLL_TIMEOUT = 20.0


class Tracker(Downloads):
    """The worker's poll step and what follows a run's end (mixed into ``Worker``)."""

    async def _poll(self, key: JobKey) -> None:
        """One poll (``_start_due`` counted it in ``self.polling``); a completed run's
        download follows in the same task, once the poll slot is given back."""
        try:
            download = await self._poll_once(key)
        finally:
            self.polling -= 1
            self._wake.set()  # a poll slot is free: due polls may start
        if download:
            await self._download(key)

    async def _poll_once(self, key: JobKey) -> bool:
        """Ask FLORA once how the run is doing; its answer decides the next step.

        Returns:
            True when the run completed and its outputs are to be downloaded now.
        """
        rec = self.jobs[key]
        assert rec.run_id is not None
        try:
            run = await self.client.get_run(
                rec.technique, rec.run_id, timeout=min(self.settings.timeout, POLL_TIMEOUT)
            )
        except FloraError as exc:
            self._poll_failed(key, exc)
            return False
        self.poll_streaks.pop(key, None)
        self.not_found.pop(key, None)
        self.last_success = self.clock()
        return self._after_poll(key, run)

    def _poll_failed(self, key: JobKey, exc: FloraError) -> None:
        """A poll failed: stop the batch, leave the run, or poll it again after its backoff."""
        run_id = self.jobs[key].run_id
        if isinstance(exc, AuthError):
            self.abort = exc
            return
        if isinstance(exc, NotFound):
            self._not_found(key, exc)
            return
        if isinstance(exc, RateLimited):  # FLORA's limit is the workspace's: all slow down
            self.pacer.rate_limited(exc.retry_after)
        now = self.clock()
        streak = self.poll_streaks.setdefault(key, retrying.Streak())
        wait = streak.failed(exc, what=f"poll {run_id}", now=now, at_least=self.settings.min_poll)
        if wait is None:  # not retryable, or the policy is spent: a fresh streak later
            del self.poll_streaks[key]
            self.stuck[key] = f"polling kept failing: {exc}"
            self._schedule(key, now + self.settings.max_poll, "poll")
            return
        self._schedule(key, now + wait, "poll")

    def _not_found(self, key: JobKey, exc: FloraError) -> None:
        """FLORA answered 404 for a run it made (CONTRACT.md §4: the key's workspace may
        have changed).  A few in a row, spaced out, and the job is ``unresolved`` with its
        run kept (``mark_lost``): the next ``run`` polls it again, and the user may buy it
        again with ``--resubmit-unresolved``.  Never left "running" for ever."""
        self.poll_streaks.pop(key, None)
        self.not_found[key] += 1
        rec = self.jobs[key]
        if self.not_found[key] < _LOST_AFTER:
            wait = max(self.settings.min_poll, 2.0) * self.not_found[key]
            self._schedule(key, self.clock() + wait, "poll")
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
        self._update(self.ledger.mark_lost(key, now=self.clock(), reason=reason))
        self.stuck.pop(key, None)
        self._release(key)
        log.warning("lost %s: %s", rec.source or key, reason)

    def _after_poll(self, key: JobKey, run: RunInfo) -> bool:
        """Act on a run's status: schedule the next poll, record the failure, or say that
        its outputs are to be downloaded now (True: the caller starts the download)."""
        self.stuck.pop(key, None)
        if run.status == "completed":
            return self._completed(key, run)
        if run.status == "failed":
            self._run_failed(key, run)
        elif not self._unknown_too_long(key, run):
            self._schedule(key, self.clock() + self._next_poll_delay(key, run), "poll")
        return False

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
        """Poll near the expected end (``polling.next_poll_delay``)."""
        rec = self.jobs[key]
        typical = self.learned.typical(rec.technique)
        return polling.next_poll_delay(
            run, rec, typical, self.settings, self.clock(), self._offset_for(rec, run)
        )

    def _offset_for(self, rec: JobRecord, run: RunInfo) -> float:
        """The server clock's offset to read ``run``'s times with: measured, or stored by an
        earlier process, else guessed from this run (stamped about when its job was first
        sent): only the poll schedule uses the guess, never a decision about money."""
        if self.learned.offset_known or self.stored_offset is not None:
            return self.learned.offset
        if run.created_at is not None and rec.submitted_at is not None:
            return run.created_at / 1000.0 - rec.submitted_at
        return 0.0

    def _completed(self, key: JobKey, run: RunInfo) -> bool:
        """A run completed: True, download its outputs now.

        Several outputs are recorded first (``downloading``).  A single one is recorded
        together with its file by ``finish_run`` (``Downloads._download_only``): one
        commit less per job, and the ledger still has the run, so a crash before that
        commit only means polling the run again.
        """
        rec = self.jobs[key]
        self.learned.learn_run(rec.technique, run)
        if not run.outputs:
            self._run_failed(
                key, run, code="no_outputs", message="FLORA said completed but gave no outputs"
            )
            return False
        self._bill(key, run.charged_cost)
        if len(run.outputs) == 1:
            self.completed_runs[key] = run
        else:
            self._record_outputs(key, run)
        return True

    def _run_failed(
        self, key: JobKey, run: RunInfo, *, code: str | None = None, message: str | None = None
    ) -> None:
        rec = self.jobs[key]
        code = code or run.error_code or "unknown"
        message = message or run.error_message or ""
        category = classify_run_failure(code, message) if code != "no_outputs" else "retryable"
        self._bill(key, run.charged_cost, failed=True)
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

    async def _reread_charge(self, key: JobKey) -> None:
        """Charges can arrive after the run ends (CONTRACT.md §4): read them again, less and
        less often; the run stays reserved meanwhile."""
        rec = self.jobs[key]
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
                failed = self.jobs[key].state is JobState.FAILED
                self._bill(key, run.charged_cost, failed=failed)
                self._update(self.ledger.set_charged(key, run.charged_cost, now=self.clock()))
                return
            await asyncio.sleep(wait)
            waited += wait
            wait = min(wait * 2, self.settings.max_poll)
        self._bill_never_came(rec)

    def _bill_never_came(self, rec: JobRecord) -> None:
        """The bill is still unknown: it stays reserved (the next run reads it again).  Under
        a cap, a technique whose bill was never seen is not bought again in this run."""
        if self.budget.cap is None or rec.technique in self.budget.highest:
            return
        self.stop_new = self.stop_new or "budget"
        self.budget_notes.append(
            f"no bill of {rec.technique} has arrived yet (run {rec.run_id}): under max_cost "
            "no more of its runs are bought until one has; run the same command later"
        )

"""Reconciliation: which run a job's key made, when FLORA will not say, from the run history.

A create that may have landed but whose answer we lost (a timeout, a dropped
connection, a crash) is sent again with the same key.  FLORA then answers with the run
(replay), or with a 409 that proves the key made a run but names none, or with another
4xx; and once the key's window is over (about 2 h), FLORA has forgotten it and a repeat
would buy a second run.  In every case but the replay the job goes to
``needs_reconcile`` and the run is looked for in the history (``GET /technique-runs``).

What makes the answer certain: the worker never has two creates of one technique in
flight whose runs are not on disk (``WorkerState.gates``), so a run of that technique
that no job of the ledger owns (``Ledger.known_runs``) and that FLORA stamped while this
job's creates were in the air (on our clock: the server's offset, measured from create
answers, or the one a past process stored) can only be this job's, unless someone else
works in the same workspace.  ``judge`` decides, from what the history shows:

* **adopt** the one candidate: when FLORA proved the key made a run (409/422), or when
  no run of another client shows in the history around it;
* **resend** (with the same key, FLORA forgot it) when no create can have landed: no
  candidate in a complete history read ``history_lag`` after the last possible landing;
* **later** when the history cannot tell yet (not listed yet, cut short, unreachable, or
  another job's create of the technique still in the air);
* **failed**, when FLORA refused a repeat (a 4xx) and the history shows nothing landed;
* **unresolved** otherwise (several candidates: other clients' runs), for the user, with
  the row named and the candidates listed; re-buying is offered only when it cannot pay
  twice for a key FLORA is known to hold.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .. import retrying
from ..errors import FloraError, LedgerConflict, NotFound
from ..remote.client import RunHistory
from ..types import JobKey, JobRecord, JobState, RunInfo
from .state import WorkerState

log = logging.getLogger("flora_batch.worker")

#: Seconds the server's clock may be off ours when no offset was ever measured.
MAX_SKEW = 600.0
#: Seconds of doubt around a measured offset (the create's round trip, stamping delays).
_SLACK = 2.0
#: Seconds of doubt around an offset a past process stored (clocks drift, slowly).
_STORED_SLACK = 5.0
#: How far before a job's first send the history is read, to see other clients' runs.
_LOOK_BACK = 60.0
#: Looks at the history that could not tell, before the job is left to the user.
_MAX_LATER = 12

Kind = Literal["adopt", "resend", "later", "failed", "unresolved"]


@dataclass(frozen=True)
class Verdict:
    """What a reconciliation decided, and why (for the ledger and the operator)."""

    kind: Kind
    run_id: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Evidence:
    """What the run history showed about one job (all run ids unknown to the ledger)."""

    mine: frozenset[str]  # runs stamped while one of the job's creates was in the air
    contested: frozenset[str]  # of those, runs another job's creates could have made too
    rivals_live: bool  # one of those other creates may still be running
    others_seen: bool  # unknown runs outside every window: someone else uses the workspace
    settled: bool  # no create of the job can still appear in the history


def judge(evidence: Evidence, *, proven: bool, cause: str) -> Verdict:
    """The reconciliation's decision: a pure function of the evidence (see the module).

    Args:
        proven: FLORA said the key made a run (409/422).
        cause: why the job is reconciled (``mark_needs_reconcile``'s code).
    """
    mine, contested = evidence.mine, evidence.contested
    if contested and evidence.rivals_live:
        return Verdict("later", reason="another create of this technique is still in the air")
    if len(mine) == 1 and not contested:
        run_id = next(iter(mine))
        if evidence.others_seen and not evidence.settled:
            # Someone else makes runs here, and ours may not be listed yet: the one run
            # shown could be theirs.  Decide once every run of the window is listed.
            return Verdict("later", reason="other clients' runs are listed around its own")
        if proven or not evidence.others_seen:
            return Verdict("adopt", run_id)
        return Verdict(
            "unresolved",
            reason=f"one run ({run_id}) was made while its create was in the air, but other "
            "clients make runs of this technique in the same workspace: it may be theirs",
        )
    if not mine:
        if not evidence.settled:
            return Verdict("later", reason="its run is not in FLORA's run history yet")
        if proven:
            return Verdict(
                "unresolved",
                reason="FLORA says its key made a run, but no such run is in the run history",
            )
        if cause == "retry_refused":
            return Verdict("failed", reason="no create of it landed, and FLORA refused it")
        return Verdict("resend", reason="no create of it landed (the run history shows none)")
    return Verdict(
        "unresolved",
        reason=f"{len(mine)} runs were made while its creates were in the air "
        f"({', '.join(sorted(mine))}): other clients work in this workspace",
    )


def candidates(
    runs: Iterable[RunInfo],
    windows: Sequence[tuple[float, float]],
    known: set[str],
    offset: float,
    slack: float,
) -> set[str]:
    """Runs not in ``known`` whose stamp, on our clock, falls in one of ``windows``."""
    out = set()
    for run in runs:
        if run.run_id in known or run.created_at is None:
            continue
        created = run.created_at / 1000.0 - offset
        if any(start - slack <= created <= end + slack for start, end in windows):
            out.add(run.run_id)
    return out


class Reconciler(WorkerState):
    """The worker's reconcile step (mixed into ``Worker``)."""

    async def _reconcile(self, key: JobKey) -> None:
        """Look for the job's run in the history and act on ``judge``'s verdict."""
        rec = self.jobs[key]
        offset, slack = self._clock()
        windows = self.windows.get(key) or self._sent_between(rec)
        since = min(start for start, _ in windows) - slack - _LOOK_BACK
        try:
            history = await retrying.call(
                lambda: self.client.technique_runs(
                    self._technique_id(rec), newer_than=(since + offset) * 1000
                ),
                what="list technique runs",
            )
        except NotFound:
            reason = "FLORA offers no run history (GET /technique-runs) to look for its run in"
            self._act(key, Verdict("unresolved", reason=reason))
            return
        except FloraError as exc:
            self._act(key, Verdict("later", reason=f"could not read the run history: {exc}"))
            return
        if not history.complete:
            reason = "the run history is longer than the pages read: looked again later"
            self._act(key, Verdict("later", reason=reason))
            return
        evidence = self._evidence(rec, history, windows, since, offset, slack)
        cause = rec.error_code or "key_expired"
        self._act(key, judge(evidence, proven=key in self.proven, cause=cause))

    def _evidence(
        self,
        rec: JobRecord,
        history: RunHistory,
        windows: list[tuple[float, float]],
        since: float,
        offset: float,
        slack: float,
    ) -> Evidence:
        runs = [r for r in history.runs if (r.created_at or 0) / 1000.0 - offset >= since]
        known = self._known_runs()
        mine = candidates(runs, windows, known, offset, slack)
        rivals = [
            r
            for other, r in self._peers(rec).items()
            if other != rec.key and r.technique == rec.technique and self._may_own_unknown_run(r)
        ]
        theirs: set[str] = set()
        live = False
        for rival in rivals:
            found = candidates(runs, self._sent_between(rival), known, offset, slack)
            theirs |= found
            if found & mine and self._live(rival):
                live = True
        unknown = {r.run_id for r in runs if r.run_id not in known}
        end = max(e for _, e in windows)
        return Evidence(
            mine=frozenset(mine),
            contested=frozenset(mine & theirs),
            rivals_live=live,
            others_seen=bool(unknown - mine - theirs),
            settled=self.clock() >= end + self._settle() + self.settings.history_lag,
        )

    def _act(self, key: JobKey, verdict: Verdict) -> None:
        """Carry out a verdict: the ledger first, then the schedule."""
        rec = self.jobs[key]
        now = self.clock()
        if verdict.kind == "adopt" and verdict.run_id is not None:
            self._adopt(key, verdict.run_id)
            return
        if verdict.kind == "later":
            self.reconcile_tries[key] += 1
            if self.reconcile_tries[key] <= _MAX_LATER:
                self.stuck[key] = f"reconciling: {verdict.reason}"
                self._schedule(key, now + self._later(rec), "reconcile")
                return
            verdict = Verdict("unresolved", reason=verdict.reason)
        self.stuck.pop(key, None)
        self.reconcile_tries.pop(key, None)
        if verdict.kind == "resend":
            self._update(
                self.ledger.release_unsent(key, now=now, reason=verdict.reason, forgotten=True)
            )
            self.windows.pop(key, None)
            self.budget.release(key)
            self.queue.appendleft(key)
        elif verdict.kind == "failed":
            message = f"{rec.error_message or 'refused'} ({verdict.reason})"
            self._update(
                self.ledger.mark_failed(
                    key, code="refused", message=message, category="input", now=now
                )
            )
            self.budget.release(key)
        else:
            reason = self._unresolved_reason(rec, verdict.reason)
            self._update(self.ledger.mark_unresolved(key, now=now, reason=reason))
        self._open_gate(key)

    def _adopt(self, key: JobKey, run_id: str) -> None:
        """The run is the job's: record it (one owner per run) and poll it."""
        try:
            rec = self._update(self.ledger.mark_running(key, run_id, now=self.clock()))
        except LedgerConflict as exc:  # another worker's job took it meanwhile
            self._act(key, Verdict("later", reason=str(exc)))
            return
        if self.known_runs is not None:
            self.known_runs.add(run_id)
        self.stuck.pop(key, None)
        self.reconcile_tries.pop(key, None)
        self.slots.add(key)
        self._schedule(key, self.clock(), "poll")
        self._open_gate(key)  # the next create waits for a commit that includes this one
        log.info("reconciled %s with %s", rec.source or key, run_id)

    def _unresolved_reason(self, rec: JobRecord, why: str) -> str:
        """What the user reads: the row, what was found, and what to do (never a re-buy of
        a key FLORA is known to hold: that would pay twice)."""
        row = f"row {rec.row_index + 1}" + (f" (id {rec.row_id})" if rec.row_id else "")
        if rec.key in self.proven:
            todo = (
                "FLORA holds its key, so one of its runs is this job's: find it in FLORA "
                "(buying it again would pay twice)"
            )
        else:
            todo = (
                "check FLORA's runs of this technique at that time; if none is this row's, "
                "run again with --resubmit-unresolved to buy it"
            )
        return f"{row} of {rec.technique}: {why}; {todo}"

    # -- what the history is read against -------------------------------------------------

    def _clock(self) -> tuple[float, float]:
        """The server clock's offset from ours, and the doubt around it, in seconds."""
        if self.learned.offset_known:
            return self.learned.offset, _SLACK + self.learned.offset_spread
        if self.stored_offset is not None:
            return self.stored_offset, _STORED_SLACK
        return 0.0, MAX_SKEW

    def _later(self, rec: JobRecord) -> float:
        """Seconds until the history is read again for this job."""
        return max(self.settings.min_poll, min(self.settings.max_poll, self.settings.history_lag))

    def _technique_id(self, rec: JobRecord) -> str:
        tech = self.techniques.get(rec.technique)
        return tech.technique_id if tech else f"tech_{rec.technique}"

    def _known_runs(self) -> set[str]:
        """Every run id a job owns: the ledger's ``runs`` and what this process learned.

        Read once in a ``run`` (this process is the ledger's only writer); every time in
        cluster mode, where other workers add runs.
        """
        if self.known_runs is None or self.refill is not None:
            self.known_runs = self.ledger.known_runs()
        mine = {r.run_id for r in self.jobs.values() if r.run_id}
        return self.known_runs | mine | self.saved_runs

    def _peers(self, rec: JobRecord) -> dict[JobKey, JobRecord]:
        """Jobs whose runs a reconciliation must not take: in cluster mode the whole batch
        in the shared ledger (other workers' jobs too), else this worker's own."""
        if self.refill is None:
            return self.jobs
        return {r.key: r for r in self.ledger.jobs(batch=rec.batch)}

    def _live(self, rec: JobRecord) -> bool:
        """Whether one of ``rec``'s creates may still be in the air (ours or another
        worker's under a live lease): its run is not on disk yet, but soon may be."""
        if rec.key in self.flights or (
            rec.state is JobState.SUBMITTING and rec.key in self.jobs and rec.key in self.slots
        ):
            return True
        lease = rec.lease_until
        return rec.worker_id is not None and lease is not None and lease > self.clock()

    @staticmethod
    def _may_own_unknown_run(rec: JobRecord) -> bool:
        """Whether one of this job's creates may have made a run the ledger does not know."""
        return rec.run_id is None and rec.submitted_at is not None and rec.state in (
            JobState.SUBMITTING,
            JobState.NEEDS_RECONCILE,
            JobState.UNRESOLVED,
        )

    def _sent_between(self, rec: JobRecord) -> list[tuple[float, float]]:
        """When this job's creates may have been in the air: this process's sends, or from
        its first send to its last move (a settled job) or now."""
        if rec.key in self.windows:
            return self.windows[rec.key]
        settled = rec.state in (JobState.NEEDS_RECONCILE, JobState.UNRESOLVED)
        end = rec.updated_at if settled and rec.updated_at else self.clock()
        return [(rec.submitted_at or 0.0, end)]

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

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .. import retrying
from ..config import Settings
from ..errors import FloraError, LedgerConflict, NotFound
from ..ledger import Ledger
from ..remote.client import FloraClient, RunHistory
from ..types import JobKey, JobRecord, JobState, RunInfo, Technique
from .state import Board, Clock, ServerClock, settle_seconds

log = logging.getLogger("flora_batch.worker")

#: How far before a job's first send the history is read, to see other clients' runs.
_LOOK_BACK = 60.0
#: Looks at the history that could not tell, before the job is left to the user.
_MAX_LATER = 12

Kind = Literal["adopt", "resend", "later", "failed", "unresolved"]


@dataclass(frozen=True)
class Verdict:
    """What a reconciliation decided, and why (for the ledger and the operator);
    ``again_at``: when to look again (``later``)."""

    kind: Kind
    run_id: str | None = None
    reason: str = ""
    again_at: float | None = None


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


@dataclass
class Sends:
    """What the create path knows of each job's sends, for reconciliation to read:
    when creates that may have made a run were in the air (``windows``, our clock), whose
    key FLORA is known to hold (``proven``), and which creates are in the air now."""

    windows: dict[JobKey, list[tuple[float, float]]] = field(default_factory=dict)
    proven: set[JobKey] = field(default_factory=set)
    flights: dict[JobKey, asyncio.Future[RunInfo]] = field(default_factory=dict)


class Reconciler:
    """The worker's reconcile step: a lost create's run, looked for in the run history.

    It records its verdict in the ledger (the run adopted, the job released, failed or
    unresolved) and returns it; the loop schedules what follows.
    """

    def __init__(
        self,
        *,
        client: FloraClient,
        ledger: Ledger,
        board: Board,
        sends: Sends,
        server_clock: ServerClock,
        techniques: dict[str, Technique],
        settings: Settings,
        clock: Clock,
        saved_runs: set[str],
        peers: Callable[[JobRecord], dict[JobKey, JobRecord]] | None = None,
    ) -> None:
        self.client, self.ledger, self.board, self.sends = client, ledger, board, sends
        self.server_clock, self.techniques = server_clock, techniques
        self.settings, self.clock = settings, clock
        #: Runs of done jobs loaded light: no job may take them.
        self.saved_runs = saved_runs
        #: Cluster mode: the jobs of the batch in the shared ledger (others' jobs too);
        #: None: this worker's own jobs are all the peers there are.
        self.peers = peers
        #: Run ids known to belong to jobs (the ledger's ``runs``, read when needed).
        self.known_runs: set[str] | None = None
        #: Looks at the run history that could not tell yet, per job.
        self.tries: Counter[JobKey] = Counter()

    async def reconcile(self, key: JobKey) -> Verdict:
        """Look for the job's run in the history; record and return the verdict."""
        rec = self.board[key]
        offset, slack = self.server_clock.window()
        windows = self.sends.windows.get(key) or self._sent_between(rec)
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
            return self._record(key, Verdict("unresolved", reason=reason))
        except FloraError as exc:
            reason = f"could not read the run history: {exc}"
            return self._record(key, Verdict("later", reason=reason))
        if not history.complete:
            reason = "the run history is longer than the pages read: looked again later"
            return self._record(key, Verdict("later", reason=reason))
        evidence = self._evidence(rec, history, windows, since, offset, slack)
        cause = rec.error_code or "key_expired"
        return self._record(key, judge(evidence, proven=key in self.sends.proven, cause=cause))

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
        known = self.known()
        mine = candidates(runs, windows, known, offset, slack)
        rivals = [
            r
            for other, r in self._peers(rec).items()
            if other != rec.key and r.technique == rec.technique and _may_own_unknown_run(r)
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
        settle = settle_seconds(self.settings)
        return Evidence(
            mine=frozenset(mine),
            contested=frozenset(mine & theirs),
            rivals_live=live,
            others_seen=bool(unknown - mine - theirs),
            settled=self.clock() >= end + settle + self.settings.history_lag,
        )

    def _record(self, key: JobKey, verdict: Verdict) -> Verdict:
        """Write the verdict to the ledger (and the board); a ``later`` that keeps coming
        back becomes ``unresolved``."""
        rec = self.board[key]
        now = self.clock()
        if verdict.kind == "later":
            self.tries[key] += 1
            if self.tries[key] <= _MAX_LATER:
                self.board.stuck[key] = f"reconciling: {verdict.reason}"
                return Verdict("later", reason=verdict.reason, again_at=now + self._later())
            verdict = Verdict("unresolved", reason=verdict.reason)
        self.board.stuck.pop(key, None)
        self.tries.pop(key, None)
        if verdict.kind == "adopt" and verdict.run_id is not None:
            try:
                adopted = self.ledger.mark_running(key, verdict.run_id, now=now)
            except LedgerConflict as exc:  # another worker's job took it meanwhile
                return self._record(key, Verdict("later", reason=str(exc)))
            self.board.update(adopted)
            if self.known_runs is not None:
                self.known_runs.add(verdict.run_id)
            log.info("reconciled %s with %s", rec.source or key, verdict.run_id)
        elif verdict.kind == "resend":
            self.board.update(
                self.ledger.release_unsent(key, now=now, reason=verdict.reason, forgotten=True)
            )
            self.sends.windows.pop(key, None)
        elif verdict.kind == "failed":
            message = f"{rec.error_message or 'refused'} ({verdict.reason})"
            self.board.update(
                self.ledger.mark_failed(
                    key, code="refused", message=message, category="input", now=now
                )
            )
        else:
            reason = self._unresolved_reason(rec, verdict.reason)
            self.board.update(self.ledger.mark_unresolved(key, now=now, reason=reason))
        return verdict

    def _unresolved_reason(self, rec: JobRecord, why: str) -> str:
        """What the user reads: the row, what was found, and what to do (never a re-buy of
        a key FLORA is known to hold: that would pay twice)."""
        row = f"row {rec.row_index + 1}" + (f" (id {rec.row_id})" if rec.row_id else "")
        if rec.key in self.sends.proven:
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

    def _later(self) -> float:
        """Seconds until the history is read again for a job."""
        return max(self.settings.min_poll, min(self.settings.max_poll, self.settings.history_lag))

    def _technique_id(self, rec: JobRecord) -> str:
        tech = self.techniques.get(rec.technique)
        return tech.technique_id if tech else f"tech_{rec.technique}"

    def known(self) -> set[str]:
        """Every run id a job owns: the ledger's ``runs`` and what this process learned.

        Read once in a ``run`` (this process is the ledger's only writer); every time in
        cluster mode, where other workers add runs.
        """
        if self.known_runs is None or self.peers is not None:
            self.known_runs = self.ledger.known_runs()
        mine = {r.run_id for r in self.board.jobs.values() if r.run_id}
        return self.known_runs | mine | self.saved_runs

    def _peers(self, rec: JobRecord) -> dict[JobKey, JobRecord]:
        """Jobs whose runs a reconciliation must not take: in cluster mode the whole batch
        in the shared ledger (other workers' jobs too), else this worker's own."""
        return self.board.jobs if self.peers is None else self.peers(rec)

    def _live(self, rec: JobRecord) -> bool:
        """Whether one of ``rec``'s creates may still be in the air (ours or another
        worker's under a live lease): its run is not on disk yet, but soon may be."""
        if rec.key in self.sends.flights or (
            rec.state is JobState.SUBMITTING
            and rec.key in self.board.jobs
            and rec.key in self.board.slots
        ):
            return True
        lease = rec.lease_until
        return rec.worker_id is not None and lease is not None and lease > self.clock()

    def _sent_between(self, rec: JobRecord) -> list[tuple[float, float]]:
        """When this job's creates may have been in the air: this process's sends, or from
        its first send to its last move (a settled job) or now."""
        if rec.key in self.sends.windows:
            return self.sends.windows[rec.key]
        settled = rec.state in (JobState.NEEDS_RECONCILE, JobState.UNRESOLVED)
        end = rec.updated_at if settled and rec.updated_at else self.clock()
        return [(rec.submitted_at or 0.0, end)]


def _may_own_unknown_run(rec: JobRecord) -> bool:
    """Whether one of this job's creates may have made a run the ledger does not know."""
    return rec.run_id is None and rec.submitted_at is not None and rec.state in (
        JobState.SUBMITTING,
        JobState.NEEDS_RECONCILE,
        JobState.UNRESOLVED,
    )

"""Reconciliation: which run a duplicate idempotency key points at, from the run history.

A create that may have left (a read timeout, a dropped connection, a 409 for a key we
sent) leaves a job in ``needs_reconcile``: FLORA may have made a run for it, whose id
we do not know.  Buying it again could pay twice, so the run history is searched
instead, and a run is adopted only when that is certain; anything less is
``unresolved``, for the user to decide.
"""

from __future__ import annotations

import logging

from . import retrying
from .errors import FloraError
from .types import JobKey, JobRecord, JobState, RunInfo
from .workstate import WorkerState

log = logging.getLogger("flora_batch.worker")


class Reconciler(WorkerState):
    """The worker's reconcile step (mixed into ``Worker``)."""

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
        known = {r.run_id for r in peers.values() if r.run_id} | self.saved_runs
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

"""The legal state changes of a job, as data: ``store.Ledger`` applies nothing else.

Each :class:`Move` names the ledger method, the states it may start from and the state
it ends in.  ``no_run`` adds ``run_id IS NULL`` to the guard: those moves must never
happen to a job whose run is known (a run id, once known, is only dropped by
``retry_failed``, together with its idempotency key).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..types import JobState

S = JobState


@dataclass(frozen=True, slots=True)
class Move:
    """One arrow of the state diagram."""

    action: str
    sources: tuple[JobState, ...]
    target: JobState
    no_run: bool = False  # also require run_id IS NULL
    has_run: bool = False  # also require run_id IS NOT NULL

    def allows(self, state: str) -> bool:
        """Whether a job in ``state`` may take this move."""
        return state in self.sources


MARK_SUBMITTING = Move("mark_submitting", (S.PLANNED,), S.SUBMITTING, no_run=True)
RELEASE_UNSENT = Move(
    "release_unsent", (S.SUBMITTING, S.NEEDS_RECONCILE), S.PLANNED, no_run=True
)
MARK_RUNNING = Move(
    "mark_running", (S.SUBMITTING, S.NEEDS_RECONCILE, S.UNRESOLVED), S.RUNNING, no_run=True
)
MARK_NEEDS_RECONCILE = Move("mark_needs_reconcile", (S.SUBMITTING,), S.NEEDS_RECONCILE, no_run=True)
MARK_UNRESOLVED = Move(
    "mark_unresolved", (S.NEEDS_RECONCILE, S.SUBMITTING), S.UNRESOLVED, no_run=True
)
#: The user's decision to buy again: a job whose run could not be identified, or whose
#: run FLORA no longer knows (``mark_lost``); the old run id goes to the event log.
RESUBMIT_UNRESOLVED = Move("resubmit_unresolved", (S.UNRESOLVED,), S.PLANNED)
#: A poll answered 404 again and again: FLORA no longer shows the run (a key or workspace
#: change, CONTRACT.md §4).  The run is kept: ``reopen_lost`` polls it again later.
MARK_LOST = Move("mark_lost", (S.RUNNING, S.DOWNLOADING), S.UNRESOLVED, has_run=True)
REOPEN_LOST = Move("reopen_lost", (S.UNRESOLVED,), S.RUNNING, has_run=True)
MARK_DOWNLOADING = Move("mark_downloading", (S.RUNNING,), S.DOWNLOADING)
MARK_DONE = Move("mark_done", (S.DOWNLOADING,), S.DONE)
#: ``mark_downloading`` and the one ``save_output`` of a run with a single output, whose
#: file is already in place, in one step (the worker's usual path: one commit, not two).
FINISH_RUN = Move("finish_run", (S.RUNNING,), S.DONE)
REOPEN_DOWNLOAD = Move("reopen_download", (S.DONE,), S.DOWNLOADING)
MARK_FAILED = Move(
    "mark_failed", (S.SUBMITTING, S.RUNNING, S.DOWNLOADING, S.NEEDS_RECONCILE), S.FAILED
)
RETRY_FAILED = Move("retry_failed", (S.FAILED,), S.PLANNED)
#: Not a state change: saving an output file is only allowed while downloading (after
#: the last one, ``save_output`` also takes ``MARK_DONE``).
SAVE_OUTPUT = Move("save_output", (S.DOWNLOADING,), S.DOWNLOADING)

#: Not a state change: a create sent again with the job's key (``note_send``).
NOTE_SEND = Move("note_send", (S.SUBMITTING,), S.SUBMITTING, no_run=True)

#: Every state change, for documentation and tests.
ALL = (
    MARK_SUBMITTING,
    RELEASE_UNSENT,
    MARK_RUNNING,
    MARK_NEEDS_RECONCILE,
    MARK_UNRESOLVED,
    RESUBMIT_UNRESOLVED,
    MARK_DOWNLOADING,
    MARK_DONE,
    FINISH_RUN,
    REOPEN_DOWNLOAD,
    MARK_FAILED,
    RETRY_FAILED,
    MARK_LOST,
    REOPEN_LOST,
)

"""Shared helpers for the ledger tests (constants, PostgreSQL schemas, driving jobs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import support

from flora_batch.ledger import Ledger
from flora_batch.types import JobKey, JobSpec, JobState, RunOutput

JobFactory = Callable[..., tuple[JobKey, JobSpec]]
Opener = Callable[..., Ledger]

#: Two outputs, as a completed run reports them.
OUTPUTS = (
    RunOutput("output_1", "imageUrl", "https://media.example/1.png"),
    RunOutput("output_2", "text", "a caption"),
)
QUOTES = {"tech-a": 0.25, "tech-b": 1.5}


@contextmanager
def pg_schema() -> Iterator[str]:
    """A URL to a fresh PostgreSQL schema (dropped on exit); skips without the env var."""
    with support.pg_schema("flora_test") as url:
        yield url


def drive(ledger: Ledger, key: JobKey, state: JobState, *, now: float = 100.0) -> None:
    """Move a planned job to ``state`` along legal moves.

    ``downloading`` means every output saved but the job not done: saved (so done), then
    reopened, as after a file found missing and downloaded again.
    """
    s = JobState
    if state == s.PLANNED:
        return
    ledger.mark_submitting(key, now=now)
    if state in (s.NEEDS_RECONCILE, s.UNRESOLVED):
        ledger.mark_needs_reconcile(key, now=now + 1, reason="read timeout")
        if state == s.UNRESOLVED:
            ledger.mark_unresolved(key, now=now + 2, reason="no run found")
    elif state == s.FAILED:
        ledger.mark_failed(key, code="safety_blocked", message="no", category="input", now=now + 1)
    elif state != s.SUBMITTING:
        ledger.mark_running(key, f"run_1{key[-6:]}", now=now + 1)  # one run per job
        if state != s.RUNNING:
            ledger.mark_downloading(key, OUTPUTS, now=now + 2)
            for at, out in enumerate(OUTPUTS, start=3):  # the last one: done at now + 4
                ledger.save_output(
                    key, out.output_id, path=f"out/{out.output_id}", size=3, sha256="ab" * 32,
                    content_type="image/png", now=now + at,
                )  # fmt: skip
            if state == s.DOWNLOADING:  # every file saved, the job downloading again
                ledger.reopen_download(key, now=now + 5)

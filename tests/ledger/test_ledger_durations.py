"""``Ledger.durations``: what earlier done jobs of a technique took, for the poll policy."""

from __future__ import annotations

from ledger_support import QUOTES, JobFactory, drive

from flora_batch.ledger import Ledger
from flora_batch.types import JobState


def test_durations_come_from_done_jobs_of_the_technique_in_any_batch(
    ledger: Ledger, job_factory: JobFactory
) -> None:
    """Done jobs of the technique in every batch count; other techniques and states do not."""
    plan = [
        ("night-1", "tech-a", JobState.DONE, 100.0),  # submitted at 100, done at 104
        ("night-2", "tech-a", JobState.DONE, 200.0),
        ("night-2", "tech-b", JobState.DONE, 300.0),  # another technique
        ("night-2", "tech-a", JobState.RUNNING, 400.0),  # not done
        ("night-2", "tech-a", JobState.FAILED, 500.0),
    ]
    for batch, technique, state, now in plan:
        key, spec = job_factory(batch=batch, technique=technique)
        ledger.record_planned([(key, spec)], quoted_cost=QUOTES, now=1.0)
        drive(ledger, key, state, now=now)
    assert ledger.durations("tech-a") == [4.0, 4.0]
    assert ledger.durations("tech-a", limit=1) == [4.0]
    assert ledger.durations("tech-b") == [4.0]
    assert ledger.durations("tech-c") == []

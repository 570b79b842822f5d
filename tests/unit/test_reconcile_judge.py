"""Reconciliation's verdict (``reconcile.judge``): a pure function of what the history showed."""

from __future__ import annotations

import pytest

from flora_batch.types import RunInfo
from flora_batch.worker.reconcile import Evidence, candidates, judge


def evidence(
    mine: set[str] = frozenset(),
    contested: set[str] = frozenset(),
    *,
    live: bool = False,
    others: bool = False,
    settled: bool = True,
) -> Evidence:
    """What a history read showed about one job."""
    return Evidence(frozenset(mine), frozenset(contested), live, others, settled)


@pytest.mark.parametrize(
    ("seen", "proven", "cause", "kind"),
    [
        (evidence({"r1"}), True, "idempotency_duplicate", "adopt"),
        (evidence({"r1"}), False, "key_expired", "adopt"),  # no other client shows
        (evidence({"r1"}, others=True), False, "key_expired", "unresolved"),
        (evidence({"r1"}, others=True), True, "idempotency_duplicate", "adopt"),
        (evidence({"r1"}, others=True, settled=False), True, "idempotency_duplicate", "later"),
        (evidence({"r1"}, {"r1"}, live=True), True, "idempotency_duplicate", "later"),
        (evidence({"r1"}, {"r1"}), True, "idempotency_duplicate", "unresolved"),
        (evidence(settled=False), True, "idempotency_duplicate", "later"),
        (evidence(), True, "idempotency_duplicate", "unresolved"),
        (evidence(), False, "key_expired", "resend"),
        (evidence(), False, "retry_refused", "failed"),
        (evidence({"r1", "r2"}), True, "idempotency_duplicate", "unresolved"),
    ],
)
def test_each_verdict(seen: Evidence, proven: bool, cause: str, kind: str) -> None:
    """One run is adopted only when it can only be the job's; none is a resend only when
    nothing can have landed and FLORA forgot the key; anything doubtful waits or is left."""
    verdict = judge(seen, proven=proven, cause=cause)
    assert verdict.kind == kind
    assert (verdict.run_id == "r1") == (kind == "adopt")


def test_candidates_are_unknown_runs_stamped_in_a_window_on_our_clock() -> None:
    """The server's stamps are read with its offset; known runs never count."""
    runs = [
        RunInfo("r_in", "completed", created_at=1_030_000.0),  # 1000 s ours with +30 s skew
        RunInfo("r_known", "completed", created_at=1_030_000.0),
        RunInfo("r_out", "completed", created_at=1_040_000.0),
        RunInfo("r_none", "completed"),
    ]
    found = candidates(runs, [(999.0, 1001.0)], {"r_known"}, offset=30.0, slack=2.0)
    assert found == {"r_in"}

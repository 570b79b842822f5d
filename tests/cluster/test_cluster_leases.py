"""The shared ledger's claims, leases, pacing and fence (``ledger/leases.py``), in process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flora_batch.errors import LeaseLost, LedgerError
from flora_batch.ledger import Ledger
from flora_batch.ledger.leases import BatchRow, Leases
from flora_batch.types import JobKey, JobSpec, JobState, RunInput

pytestmark = pytest.mark.postgres
NOW = 1_000_000.0


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    """A ledger with batch ``b`` of 6 planned jobs at 1.0 each, cap 3, no max_cost."""
    with Ledger.open(pg_url) as led:
        Leases(led).publish(BatchRow("b", "/tmp/r", None, 3, 0.0, "{}", None, NOW), now=NOW)
        specs = [
            (JobKey(f"k{i}"), JobSpec("b", "t", (RunInput("p", "text", str(i)),), row_index=i))
            for i in range(6)
        ]
        led.record_planned(specs, quoted_cost={"t": 1.0}, now=NOW)
        yield led


def test_claims_stop_at_the_cluster_wide_cap(ledger: Ledger):
    """Claimed planned jobs count as in flight: two workers get 3 jobs between them, not 6."""
    leases = Leases(ledger)
    first = leases.claim("b", "a", 2, now=NOW, lease=10)
    second = leases.claim("b", "c", 5, now=NOW, lease=10)
    assert [j.key for j in first] == ["k0", "k1"] and [j.key for j in second] == ["k2"]
    assert {j.worker_id for j in first} == {"a"} and first[0].lease_until == NOW + 10
    assert leases.in_flight("b", now=NOW) == 3


def test_an_expired_lease_is_taken_over_in_flight_jobs_first(ledger: Ledger):
    """After the lease, another worker takes the job, in whatever state it was left."""
    leases = Leases(ledger)
    (job,) = leases.claim("b", "dead", 1, now=NOW, lease=5)
    ledger.worker_id = "dead"
    ledger.mark_submitting(job.key, now=NOW + 1)
    assert leases.claim("b", "heir", 1, now=NOW + 4, lease=5)[0].key != job.key
    taken = leases.claim("b", "heir", 3, now=NOW + 6, lease=5)
    assert taken[0].key == job.key and taken[0].state is JobState.SUBMITTING
    claim = [e for e in ledger.events(job.key) if e["detail"].get("action") == "claim"][-1]
    assert claim["detail"]["previous"] == "dead" and claim["detail"]["previous_lease"] == NOW + 5


def test_a_worker_whose_lease_was_taken_over_cannot_change_the_job(ledger: Ledger):
    """The fence: a ledger opened as worker X refuses to move a job X no longer holds."""
    leases = Leases(ledger)
    (job,) = leases.claim("b", "slow", 1, now=NOW, lease=5)
    leases.claim("b", "fast", 3, now=NOW + 6, lease=5)
    ledger.worker_id = "slow"
    with pytest.raises(LeaseLost, match="fast holds it"):
        ledger.mark_submitting(job.key, now=NOW + 7)
    assert ledger.get(job.key).state is JobState.PLANNED


def test_renew_keeps_and_hand_back_releases(ledger: Ledger):
    """Renewed leases are not taken; handed-back jobs are free at once (or after not_before)."""
    leases = Leases(ledger)
    leases.claim("b", "a", 3, now=NOW, lease=5)
    assert leases.renew("a", now=NOW + 4, lease=5) == 3
    assert leases.claim("b", "c", 3, now=NOW + 6, lease=5) == []
    assert leases.hand_back("a", now=NOW + 6, keys=["k0"], not_before=NOW + 20) == 1
    assert leases.hand_back("a", now=NOW + 6) == 2
    # k0 waits (not_before) and, held by nobody, is not in flight: the cap admits k3.
    assert [j.key for j in leases.claim("b", "c", 3, now=NOW + 6, lease=5)] == ["k1", "k2", "k3"]
    assert next(j.key for j in leases.claim("b", "c", 3, now=NOW + 21, lease=5)) == "k0"


def test_claims_keep_within_max_cost(ledger: Ledger):
    """Quotes of claimed jobs count against max_cost: 5.0 buys five 1.0 jobs, not six (the
    first alone: no bill of the technique is known before it)."""
    leases = Leases(ledger)
    leases.publish(BatchRow("b", "/tmp/r", 5.0, 3, 0.0, "{}", None, NOW), now=NOW)
    got = []
    for step in range(4):
        now = NOW + step * 10
        batch = leases.claim("b", "a", 3, now=now, lease=5)
        for job in batch:
            ledger.worker_id = "a"
            ledger.mark_submitting(job.key, now=now)
            ledger.mark_failed(
                job.key, code="x", message="", category="input", now=now, charged_cost=1.0
            )
        got += batch
    assert len(got) == 5
    assert not leases.has_work("b", now=NOW + 100)


def test_a_429_pauses_and_halves_once_per_pause(ledger: Ledger):
    """One pause for everyone; 429s inside it do not halve again; creates wait it out."""
    leases = Leases(ledger)
    first = leases.rate_limited("b", "a", now=NOW, pause=2.0)
    again = leases.rate_limited("b", "c", now=NOW + 1, pause=2.0)
    assert first is not None and again is not None
    assert (first.in_flight_limit, again.in_flight_limit) == (1, 1)
    assert again.paused_until == NOW + 3
    assert leases.reserve_submit("b", now=NOW + 1, interval=0.0) == NOW + 3
    assert leases.claim("b", "a", 3, now=NOW + 1, lease=5) == []
    assert len(leases.claim("b", "a", 3, now=NOW + 3, lease=5)) == 1
    for _ in range(3):
        leases.succeeded("b", now=NOW + 4)
    assert leases.pacing("b").in_flight_limit == 3  # type: ignore[union-attr]


def test_creates_are_paced_across_workers(ledger: Ledger):
    """At 2 creates/s, slots are handed out 0.5 s apart whoever asks."""
    leases = Leases(ledger)
    slots = [leases.reserve_submit("b", now=NOW, interval=0.5) for _ in range(3)]
    assert slots == [NOW, NOW + 0.5, NOW + 1.0]


def test_leases_need_postgresql(tmp_path):
    """A SQLite ledger is refused with a clear error."""
    with Ledger.open(tmp_path / "x.db") as led, pytest.raises(LedgerError, match="PostgreSQL"):
        Leases(led)


def test_claims_hold_runs_at_the_highest_bill_and_buy_an_unknown_one_alone(ledger: Ledger):
    """Under max_cost, a technique with no known bill is claimed one job at a time; once a
    bill of 2.5 (above the 1.0 quote) is known, every hold counts 2.5: 5.0 buys two."""
    leases = Leases(ledger)
    leases.publish(BatchRow("b", "/tmp/r", 5.0, 3, 0.0, "{}", None, NOW), now=NOW)
    (first,) = leases.claim("b", "a", 3, now=NOW, lease=5)
    assert leases.claim("b", "c", 3, now=NOW, lease=5) == []  # its bill is not known yet
    ledger.worker_id = "a"
    ledger.mark_submitting(first.key, now=NOW)
    ledger.mark_running(first.key, "run_first", now=NOW + 1)
    ledger.mark_failed(
        first.key, code="x", message="", category="retryable", now=NOW + 2, charged_cost=2.5
    )
    second = leases.claim("b", "c", 3, now=NOW + 3, lease=5)
    assert len(second) == 1  # 2.5 spent + 2.5 held for the next: 5.0

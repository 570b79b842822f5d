"""The poll-delay policy (``flora_batch.worker.polling``): pure, checked with Hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flora_batch.config import Settings
from flora_batch.types import JobKey, JobRecord, JobState, RunInfo
from flora_batch.worker.polling import (
    RESUME_POLLS_PER_SECOND,
    Learned,
    Typical,
    first_polls,
    next_poll_delay,
    predicted_end,
)

NOW = 1_800_000_000.0
SETTINGS = Settings(min_poll=2.0, max_poll=30.0)


def job(submitted_at: float | None = NOW - 10, **kw: object) -> JobRecord:
    """A job record as the ledger would give it (only the fields the policy reads matter)."""
    base: dict[str, object] = {
        "key": JobKey("fj1:abc"),
        "idempotency_key": "fj1:abc",
        "batch": "b",
        "technique": "sigil",
        "row_index": 0,
        "row_id": None,
        "state": JobState.RUNNING,
        "inputs": (),
        "row": {},
        "output_name": "{row}",
        "run_id": "run_1",
        "submitted_at": submitted_at,
    }
    return JobRecord(**{**base, **kw})  # type: ignore[arg-type]


def run(status: str = "running", progress: float = 0.0, **times: float | None) -> RunInfo:
    """A run answer; ``times`` are our-clock seconds, sent as the API's milliseconds."""
    ms = {k: None if v is None else v * 1000.0 for k, v in times.items()}
    return RunInfo(run_id="run_1", status=status, progress=progress, **ms)  # type: ignore[arg-type]


seconds = st.floats(min_value=0.0, max_value=3600.0, allow_nan=False)
maybe_seconds = st.none() | seconds
statuses = st.sampled_from(["pending", "running", "queued", "mystery"])


@given(
    status=statuses,
    progress=st.floats(min_value=0.0, max_value=100.0),
    created_ago=maybe_seconds,
    started_ago=maybe_seconds,
    total=maybe_seconds,
    running=maybe_seconds,
    offset=st.floats(min_value=-60.0, max_value=60.0),
    lo=st.floats(min_value=0.01, max_value=10.0),
    spread=st.floats(min_value=0.0, max_value=100.0),
)
def test_delay_is_always_between_min_and_max_poll(
    status: str,
    progress: float,
    created_ago: float | None,
    started_ago: float | None,
    total: float | None,
    running: float | None,
    offset: float,
    lo: float,
    spread: float,
) -> None:
    """Whatever FLORA says and whatever was learned: within [min_poll, max_poll]."""
    settings = Settings(min_poll=lo, max_poll=lo + spread)
    answer = run(
        status,
        progress,
        created_at=None if created_ago is None else NOW - created_ago + offset,
        started_at=None if started_ago is None else NOW - started_ago + offset,
    )
    delay = next_poll_delay(answer, job(), Typical(total, running), settings, NOW, offset)
    assert settings.min_poll <= delay <= settings.max_poll


@given(
    ran=st.floats(min_value=1.0, max_value=600.0),
    progress=st.integers(min_value=1, max_value=99),
    offset=st.floats(min_value=-60.0, max_value=60.0),
)
def test_progress_predicts_from_the_runs_own_start_not_from_submit(
    ran: float, progress: int, offset: float
) -> None:
    """The end is started + ran * 100 / (p + 0.5), whatever the queue time and clock offset."""
    answer = run(
        progress=progress, created_at=NOW - ran - 50 + offset, started_at=NOW - ran + offset
    )
    end, from_progress = predicted_end(answer, Typical(total=5.0), NOW, offset)
    assert from_progress
    assert end == pytest.approx(NOW - ran + ran * 100 / (progress + 0.5))


def test_poll_goes_half_a_min_poll_after_the_predicted_end() -> None:
    """A run at 49% after 10 s of running ends in ~10.2 s: poll then, plus min_poll / 2."""
    answer = run(progress=49, created_at=NOW - 20, started_at=NOW - 10)
    delay = next_poll_delay(answer, job(), Typical(), SETTINGS, NOW)
    assert delay == pytest.approx(10 * 100 / 49.5 - 10 + 1.0)


def test_past_a_progress_prediction_polls_every_min_poll() -> None:
    """At 99% past the predicted end: the next poll comes min_poll later."""
    answer = run(progress=99, started_at=NOW - 100)
    assert next_poll_delay(answer, job(), Typical(), SETTINGS, NOW) == SETTINGS.min_poll


def test_pending_run_waits_for_the_typical_server_side_duration() -> None:
    """Pending, technique seen to take 60 s from create: poll 60 s after create (+ min_poll/2)."""
    answer = run("pending", created_at=NOW - 5)
    delay = next_poll_delay(answer, job(), Typical(total=60.0), Settings(max_poll=300), NOW)
    assert delay == pytest.approx(55 + 1.0)


def test_running_without_progress_uses_the_typical_running_time() -> None:
    """Running at 0%: started + the technique's typical running time."""
    answer = run(progress=0, created_at=NOW - 20, started_at=NOW - 2)
    delay = next_poll_delay(answer, job(), Typical(total=60.0, running=12.0), SETTINGS, NOW)
    assert delay == pytest.approx(10 + 1.0)


def test_overdue_duration_prediction_backs_off() -> None:
    """Long past a duration-based end and still no progress: the gap grows (half the overshoot)."""
    answer = run("pending", created_at=NOW - 100)
    delay = next_poll_delay(answer, job(), Typical(total=60.0), SETTINGS, NOW)
    assert delay == pytest.approx(20.0)


def test_nothing_known_waits_as_long_as_the_run_has_existed() -> None:
    """No progress, nothing learned: at least 4 x min_poll, else the run's age."""
    young = run("pending", created_at=NOW - 3)
    old = run("pending", created_at=NOW - 20)
    assert next_poll_delay(young, job(), Typical(), SETTINGS, NOW) == 8.0
    assert next_poll_delay(old, job(), Typical(), SETTINGS, NOW) == 20.0
    undated = run("pending")  # the older dialect may send no times: date it by our submit
    assert next_poll_delay(undated, job(submitted_at=NOW - 12), Typical(), SETTINGS, NOW) == 12.0


def test_learned_durations_are_server_side_medians() -> None:
    """completed - created (and - started), medians, per technique; other techniques unknown."""
    learned = Learned()
    for took in (30.0, 40.0, 90.0):
        learned.learn_run(
            "sigil",
            run("completed", created_at=NOW, started_at=NOW + 5, completed_at=NOW + took),
        )
    assert learned.typical("sigil") == Typical(total=40.0, running=35.0)
    assert learned.typical("other") == Typical()


def test_ledger_times_serve_only_until_a_run_completes_here() -> None:
    """Done jobs' submit-to-done times (lower quartile) until a real server duration arrives."""
    learned = Learned()
    learned.learn_prior("sigil", [40.0, 50.0, 60.0, 70.0, -5.0])  # Ledger.durations
    assert learned.typical("sigil") == Typical(total=50.0)
    learned.learn_run("sigil", run("completed", created_at=NOW, completed_at=NOW + 33))
    assert learned.typical("sigil").total == 33.0


def test_clock_offset_is_the_median_of_creates() -> None:
    """The server stamps created_at mid-flight: offset = created - midpoint, median of several."""
    learned = Learned()
    for skew in (5.0, 5.2, 40.0):  # one outlier (a slow answer)
        learned.learn_offset((NOW + skew) * 1000, NOW - 0.1, NOW + 0.1)
    assert learned.offset == pytest.approx(5.2)


@given(count=st.integers(min_value=1, max_value=50_000))
def test_resumed_polls_are_spread_but_never_past_max_poll(count: int) -> None:
    """First polls after a resume: in order, within max_poll, at most the resume rate per second."""
    spread = first_polls(count, SETTINGS)
    assert len(spread) == count and spread[0] == 0.0
    assert spread == sorted(spread) and spread[-1] < SETTINGS.max_poll
    if count > 1 and spread[-1] < SETTINGS.max_poll * (count - 1) / count:
        assert (count - 1) / spread[-1] <= RESUME_POLLS_PER_SECOND * 1.0001


def test_a_few_resumed_runs_are_polled_at_once() -> None:
    """Ten runs: all first polls within a tenth of a second."""
    assert max(first_polls(10, SETTINGS)) < 0.1


def test_progress_without_started_at_extrapolates_from_create() -> None:
    """A dialect without started_at: 50% after 20 s since create predicts ~39.6 s after it."""
    answer = run(progress=50, created_at=NOW - 20)
    end, from_progress = predicted_end(answer, Typical(), NOW)
    assert from_progress and end == pytest.approx(NOW - 20 + 20 * 100 / 50.5)

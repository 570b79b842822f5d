"""A poll is one try: on a retryable error it frees its slot and waits in the poll heap.

These drive the worker's poll step (``Worker._poll``, its ``Poller``) directly, with a
scripted client and a clock the test moves, so every wait and give-up is checked exactly, without
sleeping: the waits come from ``retrying.backoff`` (not zeroed here), at least
``min_poll``, and after the policy's attempts the run is reported stuck and polled
again ``max_poll`` later, as when the poll retried in place.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from flora_batch import retrying
from flora_batch.config import Settings
from flora_batch.errors import (
    AuthError,
    FloraError,
    InvalidInput,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
)
from flora_batch.types import JobKey, JobRecord, JobState, RunInfo
from flora_batch.worker import Worker, tracking

KEY = JobKey("fj1:abc")
SETTINGS = Settings(min_poll=2.0, max_poll=30.0)
POLICY = retrying.DEFAULT_POLICY


class Clock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Script:
    """A client whose ``get_run`` raises or returns the scripted answers in turn."""

    def __init__(self) -> None:
        self.answers: list[FloraError | RunInfo] = []
        self.calls = 0
        self.timeouts: list[float | None] = []

    async def get_run(
        self, technique: str, run_id: str, *, timeout: float | None = None
    ) -> RunInfo:
        """The next scripted answer (a pending run once the script is done)."""
        self.calls += 1
        self.timeouts.append(timeout)
        answer = self.answers.pop(0) if self.answers else RunInfo(run_id, "pending")
        if isinstance(answer, FloraError):
            raise answer
        return answer


def make_worker(clock: Clock, script: Script) -> Worker:
    """A worker with one running job; the poll step's failures touch no ledger or file."""
    none: Any = None
    w = Worker(none, script, none, {}, settings=SETTINGS, concurrency=4, clock=clock)  # type: ignore[arg-type]
    w.jobs[KEY] = JobRecord(
        key=KEY,
        idempotency_key="fj1:abc",
        batch="b",
        technique="studio-shot",
        row_index=0,
        row_id=None,
        state=JobState.RUNNING,
        inputs=(),
        row={},
        output_name="{row}",
        run_id="run_1",
        submitted_at=clock.now - 10,
    )
    w.board.slots.add(KEY)
    return w


async def poll(w: Worker) -> float | None:
    """One poll as ``_start_due`` starts it; seconds until the run's next poll, if any."""
    w.agenda.polls_due.clear()
    w.agenda.polling += 1
    await w._poll(KEY)
    assert w.agenda.polling == 0  # the slot is free again, whatever happened
    if not w.agenda.polls_due:
        return None
    (when, _, key), *rest = w.agenda.polls_due
    assert key == KEY and not rest
    return when - w.clock()


@pytest.fixture
def clock() -> Clock:
    """The test's clock."""
    return Clock()


@pytest.fixture
def script() -> Script:
    """The test's scripted client."""
    return Script()


@pytest.mark.parametrize(
    ("error", "wait"),
    [
        (ServerError("503"), SETTINGS.min_poll),  # backoff(1) is 0.5 s: min_poll wins
        (TransportError("connect"), SETTINGS.min_poll),
        (RateLimited("429", retry_after=7.0), 7.0),  # Retry-After replaces the backoff
        (RateLimited("429", retry_after=0.5), SETTINGS.min_poll),
        (RateLimited("429", retry_after=600.0), POLICY.max_retry_after),  # capped
    ],
)
async def test_a_retryable_failure_is_one_try_then_a_wait_in_the_heap(
    clock: Clock, script: Script, error: FloraError, wait: float
) -> None:
    """One request, the slot freed, the run back in the heap after its backoff."""
    script.answers = [error]
    w = make_worker(clock, script)
    assert await poll(w) == wait
    assert script.calls == 1
    assert KEY not in w.stuck and w.abort is None and KEY in w.board.slots


async def test_waits_grow_with_each_failure_and_reset_at_an_answer(
    clock: Clock, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    """Failures 1-5 wait backoff(n) (at least min_poll) and are logged with their attempt
    number; an answer clears the count, so the next failure is attempt 1 again."""
    script.answers = [ServerError("503")] * 5 + [RunInfo("run_1", "pending"), ServerError("503")]
    w = make_worker(clock, script)
    waits = []
    with caplog.at_level(logging.INFO, logger="flora_batch.retry"):
        for _ in range(5):
            waits.append(await poll(w))
            clock.now += 1.0
        assert await poll(w) is not None  # the answer: its next poll as the policy says
        assert KEY not in w.poller.streaks and w.pulse.last_success == clock.now
        again = await poll(w)
    assert waits[:3] == [SETTINGS.min_poll] * 3  # backoffs of 0.5, 1 and <= 2 s
    assert 4.0 * 0.75 <= waits[3] <= 4.0 and 8.0 * 0.75 <= waits[4] <= 8.0  # jittered
    assert again == SETTINGS.min_poll
    attempts = [r.getMessage().split(" in ")[0] for r in caplog.records]
    assert attempts == [f"retrying poll run_1 (attempt {n})" for n in (1, 2, 3, 4, 5, 1)]


async def test_after_the_policy_s_attempts_the_run_is_stuck_and_polled_max_poll_later(
    clock: Clock, script: Script
) -> None:
    """attempts - 1 failures wait their backoff; the attempts-th reports the run stuck,
    polls it again max_poll later, and the next failure starts a fresh streak; an answer
    takes the run off the stuck list."""
    script.answers = [ServerError("503 again")] * (POLICY.attempts + 1)
    w = make_worker(clock, script)
    for _ in range(POLICY.attempts - 1):
        assert await poll(w) is not None and KEY not in w.stuck
        clock.now += 1.0
    assert await poll(w) == SETTINGS.max_poll
    assert w.stuck[KEY] == "polling kept failing: 503 again"
    assert KEY not in w.poller.streaks
    assert await poll(w) == SETTINGS.min_poll  # a fresh streak: attempt 1's backoff
    assert w.poller.streaks[KEY].failures == 1 and KEY in w.stuck
    await poll(w)
    assert KEY not in w.stuck and KEY not in w.poller.streaks
    assert script.calls == POLICY.attempts + 2


async def test_the_policy_s_total_time_ends_a_streak_too(clock: Clock, script: Script) -> None:
    """Two failures total_seconds apart: the second already gives up."""
    script.answers = [ServerError("503"), ServerError("503")]
    w = make_worker(clock, script)
    assert await poll(w) == SETTINGS.min_poll
    clock.now += POLICY.total_seconds
    assert await poll(w) == SETTINGS.max_poll
    assert w.stuck[KEY].startswith("polling kept failing")


async def test_an_error_not_retryable_is_reported_at_once(clock: Clock, script: Script) -> None:
    """A 400 on a poll is not retried: stuck, polled again max_poll later."""
    script.answers = [InvalidInput("400 bad id")]
    w = make_worker(clock, script)
    assert await poll(w) == SETTINGS.max_poll
    assert w.stuck[KEY] == "polling kept failing: 400 bad id" and KEY not in w.poller.streaks


async def test_a_404_is_asked_again_later_and_a_401_stops_the_batch(
    clock: Clock, script: Script
) -> None:
    """404 after a 503: the run is polled again, later each time (a few 404s in a row make
    it lost: ``test_resume``); the job keeps its slot meanwhile.  401 aborts."""
    script.answers = [ServerError("503"), NotFound("404"), NotFound("404")]
    w = make_worker(clock, script)
    await poll(w)
    assert await poll(w) == 2.0
    assert await poll(w) == 4.0
    assert w.poller.not_found[KEY] == 2 and KEY not in w.poller.streaks
    denied = AuthError("401")
    script.answers = [denied]
    w = make_worker(clock, script)
    assert await poll(w) is None and w.abort is denied


async def test_failed_polls_are_not_answers(clock: Clock, script: Script) -> None:
    """last_success moves only with an answer (the loop stops at outage_limit without one)."""
    script.answers = [ServerError("503")] * 3
    w = make_worker(clock, script)
    before = w.pulse.last_success
    for _ in range(3):
        clock.now += 10.0
        await poll(w)
    assert w.pulse.last_success == before


async def test_a_poll_waits_no_longer_than_the_poll_timeout(clock: Clock, script: Script) -> None:
    """A poll holds a poll slot while it waits: it asks for the short poll timeout, not the
    client's (a hung poll fails, gives its slot back and is retried after its backoff)."""
    w = make_worker(clock, script)
    await poll(w)
    assert script.timeouts == [min(SETTINGS.timeout, tracking.POLL_TIMEOUT)]
    assert tracking.POLL_TIMEOUT < SETTINGS.timeout

"""The retry policy: ``call`` (a plain first try, tenacity after) and ``Streak`` (scheduled)."""

from __future__ import annotations

import logging

import pytest

from flora_batch import retrying
from flora_batch.errors import AuthError, RateLimited, ServerError
from flora_batch.retrying import RetryPolicy

FAST = RetryPolicy(attempts=4, total_seconds=60.0, initial=0.001, maximum=0.002)


class Flaky:
    """Fails with ``errors`` in turn, then answers ``"ok"``; counts the calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_first_try_success_is_one_call_and_no_retry() -> None:
    """The common case: one call, no retry hook."""
    fn, seen = Flaky(), []
    got = await retrying.call(fn, what="poll", policy=FAST, on_retry=lambda e, w: seen.append(e))
    assert (got, fn.calls, seen) == ("ok", 1, [])


async def test_retryable_failures_are_retried_until_success() -> None:
    """Two 503s then an answer: three calls, the hook told of both failures in order."""
    first, second = ServerError("503 one"), ServerError("503 two")
    fn, seen = Flaky(first, second), []
    got = await retrying.call(fn, what="poll", policy=FAST, on_retry=lambda e, w: seen.append(e))
    assert (got, fn.calls) == ("ok", 3)
    assert seen == [first, second]


async def test_attempts_are_capped_and_the_last_error_raised() -> None:
    """Always failing: exactly ``attempts`` calls, then the last error itself."""
    errors = [ServerError(f"503 #{i}") for i in range(10)]
    fn, seen = Flaky(*errors), []
    with pytest.raises(ServerError) as info:
        await retrying.call(fn, what="poll", policy=FAST, on_retry=lambda e, w: seen.append(e))
    assert fn.calls == FAST.attempts and info.value is errors[FAST.attempts - 1]
    assert len(seen) == FAST.attempts - 1


async def test_one_attempt_policy_never_retries() -> None:
    """attempts=1: the first failure is the answer."""
    fn = Flaky(ServerError("503"))
    with pytest.raises(ServerError):
        await retrying.call(fn, what="poll", policy=RetryPolicy(attempts=1))
    assert fn.calls == 1


async def test_no_time_left_means_no_retry() -> None:
    """total_seconds=0: the first failure already used the policy's time."""
    fn = Flaky(ServerError("503"))
    with pytest.raises(ServerError):
        await retrying.call(fn, what="poll", policy=RetryPolicy(total_seconds=0.0))
    assert fn.calls == 1


async def test_not_retryable_is_raised_at_once() -> None:
    """A 401 is not retried, first try or later."""
    fn = Flaky(AuthError("401"))
    with pytest.raises(AuthError):
        await retrying.call(fn, what="poll", policy=FAST)
    assert fn.calls == 1
    later = Flaky(ServerError("503"), AuthError("401"))
    with pytest.raises(AuthError):
        await retrying.call(later, what="poll", policy=FAST)
    assert later.calls == 2


async def test_waits_and_logs_number_attempts_from_one(caplog: pytest.LogCaptureFixture) -> None:
    """Attempt numbers and waits run on across the plain try and tenacity's loop."""
    waits: list[float] = []
    fn = Flaky(RateLimited("429", retry_after=0.003), ServerError("503"), ServerError("503"))
    with caplog.at_level(logging.INFO, logger="flora_batch.retry"):
        got = await retrying.call(
            fn, what="poll r1", policy=FAST, on_retry=lambda e, w: waits.append(w)
        )
    assert got == "ok"
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == [
        "retrying poll r1 (attempt 1)",
        "retrying poll r1 (attempt 2)",
        "retrying poll r1 (attempt 3)",
    ]
    assert waits[0] == 0.003  # Retry-After replaces the backoff
    assert 0.002 * 0.75 <= waits[2] <= 0.002  # attempt 3's backoff: initial x 4, capped


async def test_testing_mode_zeroes_every_wait() -> None:
    """set_testing: the hook is told 0-s waits, on the first retry and the later ones."""
    waits: list[float] = []
    fn = Flaky(ServerError("503"), ServerError("503"))
    with retrying.set_testing():
        await retrying.call(fn, what="poll", on_retry=lambda e, w: waits.append(w))
    assert waits == [0.0, 0.0]


async def test_a_streak_gives_up_where_call_does() -> None:
    """Always failing: ``call`` makes ``attempts`` calls, and a Streak of the same policy
    waits after the first attempts - 1 failures and gives up at the attempts-th."""
    fn = Flaky(*[ServerError("503")] * 10)
    with pytest.raises(ServerError):
        await retrying.call(fn, what="poll", policy=FAST)
    streak = retrying.Streak()
    waits = [streak.failed(ServerError("503"), what="poll", now=0.0, policy=FAST)]
    while waits[-1] is not None:
        waits.append(streak.failed(ServerError("503"), what="poll", now=0.0, policy=FAST))
    assert len(waits) == fn.calls == FAST.attempts
    assert all(w is not None and 0 < w <= FAST.maximum for w in waits[:-1])


def test_a_streak_gives_up_when_the_policy_s_time_is_spent() -> None:
    """total_seconds counts from the first failure, on the caller's clock."""
    policy = RetryPolicy(attempts=100, total_seconds=10.0)
    streak = retrying.Streak()
    assert streak.failed(ServerError("503"), what="poll", now=100.0, policy=policy) is not None
    assert streak.failed(ServerError("503"), what="poll", now=109.0, policy=policy) is not None
    assert streak.failed(ServerError("503"), what="poll", now=110.0, policy=policy) is None


def test_a_streak_never_waits_for_what_is_not_retryable() -> None:
    """A 401 ends a streak at once, even its first failure."""
    assert retrying.Streak().failed(AuthError("401"), what="poll", now=0.0) is None


def test_a_streak_logs_and_reports_the_wait_it_returns(caplog: pytest.LogCaptureFixture) -> None:
    """Retry-After replaces the backoff, ``at_least`` raises a short wait; the log line
    and ``on_retry`` get the wait returned, with attempt numbers from one."""
    told: list[tuple[BaseException, float]] = []
    streak, limited, down = retrying.Streak(), RateLimited("429", retry_after=5.0), ServerError("5")
    with caplog.at_level(logging.INFO, logger="flora_batch.retry"):
        first = streak.failed(
            limited, what="poll r1", now=0.0, on_retry=lambda e, w: told.append((e, w))
        )
        second = streak.failed(
            down, what="poll r1", now=1.0, at_least=2.0, on_retry=lambda e, w: told.append((e, w))
        )
    assert (first, second) == (5.0, 2.0)  # backoff(2) is at most 1 s
    assert told == [(limited, 5.0), (down, 2.0)]
    assert [r.getMessage() for r in caplog.records] == [
        "retrying poll r1 (attempt 1) in 5.0s: 429",
        "retrying poll r1 (attempt 2) in 2.0s: 5",
    ]


def test_a_streak_s_waits_are_zero_in_testing_mode() -> None:
    """set_testing zeroes a streak's backoff, but not the ``at_least`` floor."""
    with retrying.set_testing():
        streak = retrying.Streak()
        assert streak.failed(ServerError("503"), what="poll", now=0.0) == 0.0
        assert streak.failed(ServerError("503"), what="poll", now=0.0, at_least=0.5) == 0.5

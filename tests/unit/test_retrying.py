"""The retry policy (``flora_batch.retrying.call``): a plain first try, tenacity after."""

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

"""The retry policy, in one place (tenacity underneath).

What may be repeated is decided by the exception's ``retryable`` flag, never by a bare
``except Exception``.  Waits are exponential with jitter, capped per wait and in total;
a ``RateLimited.retry_after`` from the server replaces the backoff (capped too).

Two ways to apply it: ``call`` retries in place (the caller waits), and ``Streak`` counts
the failures of a call that is retried from a schedule instead (a poll: it gives its
slot back between tries rather than holding it through the waits).  Both give up by the
same rule (``_spent``), wait by the same ``backoff`` and log the same lines.

A create is repeated by the same policy **only because** the worker sends the same
idempotency key every time: the key is what makes it safe, not this module.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from .errors import FloraError, RateLimited

T = TypeVar("T")
log = logging.getLogger("flora_batch.retry")

_TESTING = {"on": False}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: attempts, total time, and the shape of the waits."""

    attempts: int = 6
    total_seconds: float = 300.0
    initial: float = 0.5
    maximum: float = 30.0
    max_retry_after: float = 60.0


DEFAULT_POLICY = RetryPolicy()


def is_retryable(exc: BaseException) -> bool:
    """Only FloraErrors that say so are retried."""
    return isinstance(exc, FloraError) and exc.retryable


def _spent(policy: RetryPolicy, failures: int, elapsed: float) -> bool:
    """Whether ``failures`` failed tries over ``elapsed`` seconds used up the policy."""
    return failures >= policy.attempts or elapsed >= policy.total_seconds


def backoff(attempt: int, policy: RetryPolicy, exc: BaseException | None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    if _TESTING["on"]:
        return 0.0
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        return min(exc.retry_after, policy.max_retry_after)
    base: float = min(policy.initial * 2.0 ** (attempt - 1), policy.maximum)
    return base * (1 - random.random() * 0.25)


def _wait(policy: RetryPolicy, done: int) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return backoff(done + state.attempt_number, policy, exc)

    return wait


async def call(
    fn: Callable[[], Awaitable[T]],
    *,
    what: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Run ``fn`` until it succeeds, raises something not retryable, or the policy ends.

    The first try is a plain call: most calls succeed at once, and building tenacity's
    machinery costs about 25 us where a plain await costs under 1 us (polls, the hot
    path, used to come through here; they now retry from the schedule, ``Streak``).
    It is built only after a retryable failure, and carries on from attempt 2 with what
    is left of the policy: the same attempts, waits, logs and ``on_retry`` calls as one
    tenacity loop from the start.

    Args:
        fn: the call to make; it must be safe to repeat.
        what: a short label for logs ("download run_123").
        on_retry: told of each retryable failure and the wait before the next try.
    """
    started = time.monotonic()
    try:
        return await fn()
    except BaseException as exc:
        if not is_retryable(exc) or _spent(policy, 1, time.monotonic() - started):
            raise
        first = exc
    wait = backoff(1, policy, first)
    _announce(first, 1, wait, what, on_retry)
    await asyncio.sleep(wait)
    return await _retry(fn, what, policy, on_retry, time.monotonic() - started)


def _announce(
    exc: BaseException,
    attempt: int,
    wait: float,
    what: str,
    on_retry: Callable[[BaseException, float], None] | None,
) -> None:
    """Log a retryable failure (``attempt`` is the failed try, 1-based) and tell ``on_retry``."""
    log.info("retrying %s (attempt %d) in %.1fs: %s", what, attempt, wait, exc)
    if on_retry is not None:
        on_retry(exc, wait)


async def _retry(
    fn: Callable[[], Awaitable[T]],
    what: str,
    policy: RetryPolicy,
    on_retry: Callable[[BaseException, float], None] | None,
    spent: float,
) -> T:
    """Attempts 2.. of ``call``: tenacity, with the first attempt and ``spent`` seconds used."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        if exc is not None:
            _announce(exc, state.attempt_number + 1, wait, what, on_retry)

    def stop(state: RetryCallState) -> bool:
        elapsed = spent + (state.seconds_since_start or 0.0)
        return _spent(policy, state.attempt_number + 1, elapsed)

    retrying = AsyncRetrying(
        retry=retry_if_exception(is_retryable),
        stop=stop,
        wait=_wait(policy, done=1),
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity either returns or reraises")  # pragma: no cover


@dataclass(slots=True)
class Streak:
    """The consecutive failures of a call retried from a schedule, not in place.

    ``call`` keeps its loop on the stack and holds whatever its caller holds through
    every wait.  A poll must not: the worker has a few poll slots for thousands of runs,
    and 24 runs answering 5xx would keep them all for minutes.  So a poll makes one try
    per turn and keeps this between turns: the same give-up rule, waits, attempt numbers
    and logs as ``call``, with the time on the caller's clock.
    """

    failures: int = 0
    since: float = 0.0  # when the first of them happened (the caller's clock)

    def failed(
        self,
        exc: BaseException,
        *,
        what: str,
        now: float,
        policy: RetryPolicy = DEFAULT_POLICY,
        at_least: float = 0.0,
        on_retry: Callable[[BaseException, float], None] | None = None,
    ) -> float | None:
        """Count a failed try; the seconds to wait before the next, None to give up.

        None when ``exc`` is not retryable or the policy is spent (``call`` would raise
        it); the wait is logged and told to ``on_retry`` as ``call`` does.

        Args:
            exc: what the try raised.
            what: a short label for logs ("poll run_123").
            now: the caller's clock, seconds; ``total_seconds`` counts from the first failure.
            policy: how hard to try.
            at_least: the shortest wait (a run is never polled more often than ``min_poll``).
            on_retry: told of each retryable failure and the wait before the next try.
        """
        if self.failures == 0:
            self.since = now
        self.failures += 1
        if not is_retryable(exc) or _spent(policy, self.failures, now - self.since):
            return None
        wait = max(backoff(self.failures, policy, exc), at_least)
        _announce(exc, self.failures, wait, what, on_retry)
        return wait


@contextmanager
def set_testing(on: bool = True) -> Iterator[None]:
    """Zero every wait (tests), restoring the previous setting afterwards."""
    old = _TESTING["on"]
    _TESTING["on"] = on
    try:
        yield
    finally:
        _TESTING["on"] = old

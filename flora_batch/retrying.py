"""The retry policy, in one place (tenacity underneath).

What may be repeated is decided by the exception's ``retryable`` flag, never by a bare
``except Exception``.  Waits are exponential with jitter, capped per wait and in total;
a ``RateLimited.retry_after`` from the server replaces the backoff (capped too).

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

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_any
from tenacity.stop import stop_after_attempt, stop_after_delay

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

    The first try is a plain call: most calls (a poll every few seconds per run, for
    thousands of runs) succeed at once, and building tenacity's machinery for each
    cost more than the poll itself.  It is built only after a retryable failure, and
    carries on from attempt 2 with what is left of the policy: the same attempts,
    waits, logs and ``on_retry`` calls as one tenacity loop from the start.

    Args:
        fn: the call to make; it must be safe to repeat.
        what: a short label for logs ("poll run_123").
        on_retry: told of each retryable failure and the wait before the next try.
    """
    started = time.monotonic()
    try:
        return await fn()
    except BaseException as exc:
        if not is_retryable(exc) or policy.attempts <= 1:
            raise
        if time.monotonic() - started >= policy.total_seconds:
            raise
        first = exc
    await _pause(first, 1, backoff(1, policy, first), what, on_retry)
    return await _retry(fn, what, policy, on_retry, time.monotonic() - started)


async def _pause(
    exc: BaseException,
    attempt: int,
    wait: float,
    what: str,
    on_retry: Callable[[BaseException, float], None] | None,
) -> None:
    """Log a retryable failure, tell ``on_retry``, and wait before the next try."""
    log.info("retrying %s (attempt %d) in %.1fs: %s", what, attempt, wait, exc)
    if on_retry is not None:
        on_retry(exc, wait)
    await asyncio.sleep(wait)


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
        log.info("retrying %s (attempt %d) in %.1fs: %s", what, state.attempt_number + 1, wait, exc)
        if on_retry is not None and exc is not None:
            on_retry(exc, wait)

    retrying = AsyncRetrying(
        retry=retry_if_exception(is_retryable),
        stop=stop_any(
            stop_after_attempt(policy.attempts - 1),
            stop_after_delay(max(0.0, policy.total_seconds - spent)),
        ),
        wait=_wait(policy, done=1),
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity either returns or reraises")  # pragma: no cover


@contextmanager
def set_testing(on: bool = True) -> Iterator[None]:
    """Zero every wait (tests), restoring the previous setting afterwards."""
    old = _TESTING["on"]
    _TESTING["on"] = on
    try:
        yield
    finally:
        _TESTING["on"] = old

"""One run's life, computed from the clock: ``pending`` → ``running`` → ``completed|failed``.

A run's whole timeline (when it starts, when it ends, whether it fails) is fixed when it
is created, so its state at any instant is a pure function of the clock: nothing runs in
the background, a manual clock drives every transition, and a read never races a timer.
With ``max_running`` the start times are chosen so that at most that many runs overlap,
first come first served.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from flora_batch.types import RunInput

#: Realistic ``error_message`` for each run-level code the fault plan may pick.
FAILURE_MESSAGES = {
    "provider_error": "The provider failed to complete the generation.",
    "model_timeout": "The model did not finish in time.",
    "safety_blocked": "The request was blocked by the safety filter.",
    "input_unreachable": "An input URL could not be fetched.",
    "internal_error": "An internal error occurred while running the technique.",
    "GPU_PROVIDER_ERROR": "GPU provider error: the provider refused the request.",
    "GENERATION_NO_RESULT": "The generation finished without a result.",
    "GENERATION_PROMPT_MODERATED": "The prompt was moderated.",
    "GENERATION_PROVIDER_TIMEOUT": "The generation provider timed out.",
}


def failure_message(code: str) -> str:
    """The message a failed run carries for ``code``."""
    return FAILURE_MESSAGES.get(code, f"The run failed ({code}).")


@dataclass
class RunRecord:
    """A run as the emulator keeps it; times are clock seconds, money is USD.

    ``cost`` is the technique's cost (what a quote says); ``charged`` is what the run
    was billed (``cost × bill_factor``); ``refunded`` is set once a failed run's charge
    has been given back (``refund_failed``).  ``foreign`` marks a run someone else in
    the workspace made (``other_clients``): listed and billed like ours, never keyed.
    """

    run_id: str
    seq: int
    technique: str  # the technique's slug
    inputs: tuple[RunInput, ...]
    idempotency_key: str | None
    created_at: float
    started_at: float
    ended_at: float
    run_seconds: float
    cost: float
    charged: float
    error_code: str | None = None
    error_message: str | None = None
    refunded: bool = False
    callback_url: str | None = None
    foreign: bool = False

    @property
    def fails(self) -> bool:
        """Whether this run ends ``failed`` (decided at create)."""
        return self.error_code is not None

    def status_at(self, now: float) -> str:
        """``pending``, ``running``, ``completed`` or ``failed`` at clock time ``now``."""
        if now < self.started_at:
            return "pending"
        if now < self.ended_at:
            return "running"
        return "failed" if self.fails else "completed"

    def progress_at(self, now: float) -> int:
        """0 while pending, rising while running (never 100), 100 once terminal."""
        if now >= self.ended_at:
            return 100
        if now < self.started_at or self.run_seconds <= 0:
            return 0
        return min(99, int(100 * (now - self.started_at) / self.run_seconds))

    def charged_cost_at(self, now: float, late_charge: float) -> float | None:
        """``charged_cost``: the bill, but absent for ``late_charge`` s after the end."""
        if self.ended_at <= now < self.ended_at + late_charge:
            return None
        return 0.0 if self.refunded else self.charged

    @property
    def history_order(self) -> tuple[int, int]:
        """Where the run sits in the history: created time (ms), then sequence."""
        return round(self.created_at * 1000), self.seq


def schedule(
    ready: float, run_seconds: float, earlier: Sequence[RunRecord], max_running: int | None
) -> float:
    """When a run that could start at ``ready`` does start.

    Without a limit it starts when ready.  With ``max_running = C`` it also waits for
    the run before it to start (FIFO) and for the C-th latest end among earlier runs,
    after which fewer than C of them are still running.
    """
    if max_running is None or not earlier:
        return ready
    start = max(ready, earlier[-1].started_at)
    if len(earlier) >= max_running:
        ends = heapq.nlargest(max_running, (r.ended_at for r in earlier))
        start = max(start, ends[-1])
    return start


def queue_seconds(typical_seconds: float) -> float:
    """How long a run sits ``pending`` before a worker picks it up, before speed-up."""
    return min(10.0, max(1.0, 0.08 * typical_seconds))

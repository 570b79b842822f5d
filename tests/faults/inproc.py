"""In-process batches: the real ``run_batch`` against the emulator app through ASGITransport.

``CrashingTransport`` stands in for ``kill -9`` at an exact request: once armed, the
N-th request either never reaches the server ("before") or reaches it, is fully handled
(a run created and charged, say) and its answer is lost ("after").  Either way the
transport cancels the whole batch task and never returns, so no code of the worker
learns anything from that request: only what was already in the ledger survives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from support import BASE_URL, Crasher, TravelClock, fast_settings, run_once, run_until_crash

from flora_batch.config import Settings
from flora_batch.emulator import Emulator
from flora_batch.pipeline import BatchResult

__all__ = ["BASE_URL", "TravelClock", "fast_settings", "run_once"]


class CrashingTransport(Crasher):
    """The emulator in-process, with a crash armed at the N-th request from now."""

    def __init__(self, emu: Emulator) -> None:
        super().__init__(emu)
        self.counted = 0
        self.crash_at: int | None = None
        self.kind = "any"
        self.phase = "after"

    def arm(self, after: int, phase: str, victim: asyncio.Task[Any], kind: str = "any") -> None:
        """Crash ``victim`` at the ``after``-th request of ``kind`` (any, create, media) from now.

        ``phase`` is ``before`` (the request never leaves) or ``after`` (it was handled).
        """
        self.crash_at, self.phase, self.victim, self.kind = after, phase, victim, kind
        self.counted = 0
        self.crashed = False

    def disarm(self) -> None:
        """No more crashes."""
        self.crash_at = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Forward to the emulator, unless this is the request the crash was armed for."""
        self.seen.append(f"{request.method} {request.url.path}")
        if self._counts(request):
            self.counted += 1
        hit = self.crash_at is not None and self.counted == self.crash_at
        if hit and self.phase == "before":
            await self.die()
        response = await self.inner.handle_async_request(request)
        if hit:
            await response.aread()  # the server finished its work; the answer is lost
            await self.die()
        return response

    def _counts(self, request: httpx.Request) -> bool:
        if self.kind == "create":
            return request.method == "POST"
        if self.kind == "media":
            return request.url.path.startswith("/_media/")
        return True


async def run_crashing(
    manifest_path: Path,
    settings: Settings,
    transport: CrashingTransport,
    crash: tuple[str, int, str],
    *,
    clock: Callable[[], float] = time.time,
) -> BatchResult | None:
    """A run that "dies" at ``crash`` = (kind, n, phase); None if it died, else its result."""
    kind, after, phase = crash

    def arm(task: asyncio.Task[Any]) -> None:
        transport.arm(after, phase, task, kind)

    try:
        return await run_until_crash(manifest_path, settings, transport, arm, clock=clock)
    finally:
        transport.disarm()


def replace_settings(settings: Settings, **kw: Any) -> Settings:
    """A copy of frozen settings with some fields changed."""
    return dataclasses.replace(settings, **kw)

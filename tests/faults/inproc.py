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

from flora_batch.config import Settings
from flora_batch.emulator import Emulator
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import BatchResult, run_batch
from flora_batch.worker import Worker

BASE_URL = "http://127.0.0.1/api/v1"  # loopback, so plain-HTTP media URLs are allowed


class CrashingTransport(httpx.AsyncBaseTransport):
    """The emulator in-process, with a crash armed at the N-th request from now."""

    def __init__(self, emu: Emulator) -> None:
        self.inner = httpx.ASGITransport(app=emu.app)
        self.counted = 0
        self.crash_at: int | None = None
        self.kind = "any"
        self.phase = "after"
        self.victim: asyncio.Task[Any] | None = None
        self.crashed = False
        self.seen: list[str] = []

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
            await self._die()
        response = await self.inner.handle_async_request(request)
        if hit:
            await response.aread()  # the server finished its work; the answer is lost
            await self._die()
        return response

    def _counts(self, request: httpx.Request) -> bool:
        if self.kind == "create":
            return request.method == "POST"
        if self.kind == "media":
            return request.url.path.startswith("/_media/")
        return True

    async def _die(self) -> None:
        self.crashed = True
        assert self.victim is not None
        self.victim.cancel()
        await asyncio.Event().wait()  # never returns: the process is "dead"
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Nothing to close: the emulator lives in the test."""


def fast_settings(emu: Emulator, **kw: Any) -> Settings:
    """Settings for quick in-process runs: short polls, no pacing, short parks."""
    base: dict[str, Any] = {
        "base_url": BASE_URL,
        "api_key": emu.config.api_key,
        "min_poll": 0.01,
        "max_poll": 0.3,
        "submit_rate": 0.0,
        "timeout": 10.0,
    }
    return Settings(**{**base, **kw})


class TravelClock:
    """Real time plus an offset that tests move forward (shared by emulator and worker)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def travel(self, seconds: float) -> None:
        """Jump ``seconds`` into the future."""
        self.offset += seconds


async def run_once(
    manifest_path: Path,
    settings: Settings,
    transport: httpx.AsyncBaseTransport,
    *,
    clock: Callable[[], float] = time.time,
    on_worker: Callable[[Worker], None] | None = None,
) -> BatchResult:
    """One ``run_batch`` of the manifest (read afresh, as a new process would)."""
    manifest = load_manifest(manifest_path)
    return await run_batch(
        manifest, settings, transport=transport, clock=clock, on_worker=on_worker
    )


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
    task = asyncio.ensure_future(run_once(manifest_path, settings, transport, clock=clock))
    transport.arm(after, phase, task, kind)
    try:
        return await task
    except asyncio.CancelledError:
        if not transport.crashed:
            raise
        return None
    finally:
        transport.disarm()


def replace_settings(settings: Settings, **kw: Any) -> Settings:
    """A copy of frozen settings with some fields changed."""
    return dataclasses.replace(settings, **kw)

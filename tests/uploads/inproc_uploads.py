"""In-process upload batches: the real ``run_batch`` against the emulator app, plus a web host.

``WebTransport`` sends ``https://example.com/...`` to a tiny in-memory web server (so a
download fallback has something to download) and everything else to the emulator, and can
stand in for ``kill -9`` at the n-th request matching a route: the request either never
reaches the server ("before") or is fully handled and its answer lost ("after"); the batch
task is cancelled and learns nothing more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from flora_batch.config import Settings
from flora_batch.emulator import Emulator
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import BatchResult, run_batch

BASE_URL = "http://127.0.0.1/api/v1"  # loopback: the emulator's plain-HTTP URLs are allowed


class WebTransport(httpx.AsyncBaseTransport):
    """The emulator, a fake public web host, and an optional crash."""

    def __init__(self, emu: Emulator, web: dict[str, bytes] | None = None) -> None:
        self.inner = httpx.ASGITransport(app=emu.app)
        self.web = dict(web or {})
        self.seen: list[str] = []
        self.crash: tuple[str, int, str] | None = None
        self.victim: asyncio.Task[Any] | None = None
        self.crashed = False
        self._matched = 0

    def arm(self, route: str, nth: int, phase: str, victim: asyncio.Task[Any]) -> None:
        """Crash ``victim`` at the ``nth`` request whose "METHOD path" contains ``route``."""
        self.crash, self.victim, self._matched, self.crashed = (route, nth, phase), victim, 0, False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Serve the web host or forward to the emulator, unless this request is the crash."""
        line = f"{request.method} {request.url.path}"
        self.seen.append(line)
        hit = False
        if self.crash is not None and self.crash[0] in line:
            self._matched += 1
            hit = self._matched == self.crash[1]
        if hit and self.crash is not None and self.crash[2] == "before":
            await self._die()
        response = await self._serve(request)
        if hit:
            await response.aread()
            await self._die()
        return response

    async def _serve(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "example.com":
            body = self.web.get(request.url.path)
            if body is None:
                return httpx.Response(404, text="no such file")
            return httpx.Response(200, content=body, headers={"content-type": "image/png"})
        return await self.inner.handle_async_request(request)

    async def _die(self) -> None:
        self.crashed = True
        self.crash = None
        assert self.victim is not None
        self.victim.cancel()
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        """Nothing to close: the emulator lives in the test."""


def settings(emu: Emulator, **kw: Any) -> Settings:
    """Quick in-process settings: short polls, no pacing."""
    base: dict[str, Any] = {
        "base_url": BASE_URL,
        "api_key": emu.config.api_key,
        "min_poll": 0.01,
        "max_poll": 0.3,
        "submit_rate": 0.0,
        "timeout": 10.0,
    }
    return Settings(**{**base, **kw})


async def run_once(
    manifest_path: Path,
    config: Settings,
    transport: httpx.AsyncBaseTransport,
    *,
    clock: Callable[[], float] = time.time,
) -> BatchResult:
    """One ``run_batch`` of the manifest, read afresh as a new process would."""
    return await run_batch(load_manifest(manifest_path), config, transport=transport, clock=clock)


async def run_crashing(
    manifest_path: Path,
    config: Settings,
    transport: WebTransport,
    crash: tuple[str, int, str],
    *,
    clock: Callable[[], float] = time.time,
) -> BatchResult | None:
    """A run that "dies" at ``crash`` = (route, n, phase); None if it died."""
    task = asyncio.ensure_future(run_once(manifest_path, config, transport, clock=clock))
    transport.arm(*crash, victim=task)
    try:
        return await task
    except asyncio.CancelledError:
        if not transport.crashed:
            raise
        return None


class TravelClock:
    """Real time plus an offset that tests move forward (shared by emulator and batch)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def travel(self, seconds: float) -> None:
        """Jump ``seconds`` into the future."""
        self.offset += seconds

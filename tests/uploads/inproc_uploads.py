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
from support import Crasher, TravelClock, fast_settings, run_once, run_until_crash

from flora_batch.config import Settings
from flora_batch.emulator import Emulator
from flora_batch.pipeline import BatchResult

settings = fast_settings
__all__ = ["TravelClock", "run_once", "settings"]


class WebTransport(Crasher):
    """The emulator, a fake public web host, and an optional crash."""

    def __init__(self, emu: Emulator, web: dict[str, bytes] | None = None) -> None:
        super().__init__(emu)
        self.web = dict(web or {})
        self.crash: tuple[str, int, str] | None = None
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
            await self._crash()
        response = await self._serve(request)
        if hit:
            await response.aread()
            await self._crash()
        return response

    async def _serve(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "example.com":
            body = self.web.get(request.url.path)
            if body is None:
                return httpx.Response(404, text="no such file")
            return httpx.Response(200, content=body, headers={"content-type": "image/png"})
        return await self.inner.handle_async_request(request)

    async def _crash(self) -> None:
        self.crash = None
        await self.die()


async def run_crashing(
    manifest_path: Path,
    config: Settings,
    transport: WebTransport,
    crash: tuple[str, int, str],
    *,
    clock: Callable[[], float] = time.time,
) -> BatchResult | None:
    """A run that "dies" at ``crash`` = (route, n, phase); None if it died."""

    def arm(task: asyncio.Task[Any]) -> None:
        transport.arm(*crash, victim=task)

    return await run_until_crash(manifest_path, config, transport, arm, clock=clock)

"""The worker with the real emulator in-process: transports, manifests and settings."""

from __future__ import annotations

import asyncio
import csv
import time
from pathlib import Path

import httpx

from flora_batch.config import Settings
from flora_batch.emulator import Emulator
from flora_batch.ledger import Ledger
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import BatchResult, run_batch
from flora_batch.types import JobState

BASE_URL = "http://127.0.0.1/api/v1"


class Clock:
    """Real time plus an offset that the test moves forward (shared with the emulator)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class SlowPolls(httpx.AsyncBaseTransport):
    """The emulator in-process; each poll takes ``delay`` s and polls in the air are counted."""

    def __init__(self, emu: Emulator, delay: float = 0.0) -> None:
        self.inner = httpx.ASGITransport(app=emu.app)
        self.delay = delay
        self.polling = 0
        self.most = 0
        self.polls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Forward; around a poll, count it in the air for ``delay`` seconds."""
        parts = request.url.path.split("/")
        if request.method != "GET" or len(parts) < 2 or parts[-2] != "runs":
            return await self.inner.handle_async_request(request)
        self.polls += 1
        self.polling += 1
        self.most = max(self.most, self.polling)
        try:
            await asyncio.sleep(self.delay)
            return await self.inner.handle_async_request(request)
        finally:
            self.polling -= 1


class BreakMedia(httpx.AsyncBaseTransport):
    """The emulator in-process; media whose path has ``broken`` in it answer ``status``
    (500, or 410 as an expired URL does) ``times`` times; every media path is logged."""

    def __init__(self, emu: Emulator, broken: str, times: int, status: int = 500) -> None:
        self.inner = httpx.ASGITransport(app=emu.app)
        self.broken = broken
        self.times = times
        self.status = status
        self.media: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Forward, or answer ``status`` for the broken output while ``times`` lasts."""
        path = request.url.path
        if path.startswith("/_media/"):
            self.media.append(path)
            if self.broken in path and self.times > 0:
                self.times -= 1
                code = "internal_error" if self.status >= 500 else "expired"
                return httpx.Response(self.status, json={"error": {"code": code}})
        return await self.inner.handle_async_request(request)


def batch(folder: Path, n: int, technique: str = "studio-shot") -> Path:
    """A manifest of ``n`` jobs (studio-shot by default) over allowlisted image URLs."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "rows.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["sku", "image_url"])
        out.writerows([f"S{i:03d}", f"https://media.flora.ai/demo/mug-{i}.jpg"] for i in range(n))
    manifest = folder / "m.yaml"
    manifest.write_text(
        f"name: sched\ntechnique: {technique}\nrows: rows.csv\nid: sku\n"
        'inputs:\n  product: "{image_url}"\n'
        'output:\n  dir: results\n  name: "{sku}-{output_id}{ext}"\n'
    )
    return manifest


def settings(emu: Emulator, n: int, **kw: object) -> Settings:
    """Quick in-process settings: short polls, no create pacing, everything in flight."""
    base: dict[str, object] = {
        "base_url": BASE_URL,
        "api_key": emu.config.api_key,
        "min_poll": 0.05,
        "max_poll": 0.5,
        "submit_rate": 0.0,
        "concurrency": n,
        "progress": False,
        "timeout": 1.0,
        "history_lag": 0.5,
    }
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


def states(manifest: Path) -> list[JobState]:
    """Each job's state in the ledger beside the manifest."""
    with Ledger.open(str(manifest.parent / "sched.ledger.db")) as ledger:
        return [j.state for j in ledger.jobs()]


async def created_then_stopped(manifest: Path, emu: Emulator, n: int, clock: Clock) -> BatchResult:
    """A first batch that creates its ``n`` runs and stops (``max_runtime``) before any
    of them is polled: every job is left ``running`` for a resume to find."""
    return await run_batch(
        load_manifest(manifest),
        settings(emu, n, max_runtime=1.0 + 0.03 * n, min_poll=5.0, max_poll=5.0),
        transport=SlowPolls(emu),
        clock=clock,
    )

"""flora-batch itself, driven in-process through ``pipeline.run_batch`` (ledger and all).

``transport`` selects the HTTP stack behind the same ``FloraClient`` (``None`` is what
``client.py`` builds today).  A ``RecordingTransport`` wraps it to log every poll, for the
polling scenario.  The poll policy is the one flora-batch ships (``flora_batch.worker.polling``).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from flora_batch.config import Settings
from flora_batch.ledger import Ledger
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import BatchResult, run_batch
from flora_batch.remote.client import http_stack

#: FloraClient's pool (client.py: max_connections=32, keep-alive the same); used when
#: flora-batch runs on httpx's own transport (``FLORA_BATCH_HTTP=httpx``).
CLIENT_LIMITS = httpx.Limits(max_connections=32, max_keepalive_connections=32)


@dataclass
class PollLog:
    """Per run id: the wall-clock times at which a poll answer arrived."""

    polls: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


class RecordingTransport(httpx.AsyncBaseTransport):
    """Logs every ``GET .../runs/{id}`` (a poll) and forwards to the real transport."""

    def __init__(self, inner: httpx.AsyncBaseTransport, log: PollLog) -> None:
        self.inner = inner
        self.log = log

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        parts = request.url.path.split("/")
        if request.method == "GET" and len(parts) >= 2 and parts[-2] == "runs":
            self.log.polls[parts[-1]].append(time.time())
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def make_transport(kind: str) -> httpx.AsyncBaseTransport | None:
    """A transport for FloraClient, by name.

    ``default`` (None: what client.py ships, ``flora_batch.remote.transport.AiohttpTransport``),
    ``httpx``/``httpcore`` (httpx's own, as ``FLORA_BATCH_HTTP=httpx`` gives), ``httpcoreN``
    (httpx's own with a pool of N) or ``aiohttp`` (the httpx-aiohttp package's).
    """
    if kind == "default":
        return None
    if kind in ("httpx", "httpcore"):
        return httpx.AsyncHTTPTransport(limits=CLIENT_LIMITS)
    if kind.startswith("httpcore"):  # httpcoreN: a pool of N connections
        n = int(kind.removeprefix("httpcore"))
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        return httpx.AsyncHTTPTransport(limits=limits)
    if kind == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=CLIENT_LIMITS)
    raise ValueError(kind)


def shipped_transport() -> httpx.AsyncBaseTransport:
    """The transport FloraClient ships (aiohttp's unless FLORA_BATCH_HTTP=httpx), built
    here so a recording wrapper can sit in front of it."""
    if http_stack(None) == "httpx":
        return httpx.AsyncHTTPTransport(limits=CLIENT_LIMITS)
    from flora_batch.remote.transport import AiohttpTransport

    return AiohttpTransport(max_connections=32)


def gate_client(limit: int) -> None:
    """Resize FloraClient's request gate in this process; ``0`` takes the gate away.

    client.py lets at most ``max_connections`` requests into httpx at once (the rest
    wait on a semaphore); ``0`` measures flora-batch as it was before that change.
    """
    import asyncio

    from flora_batch.remote import client as client_mod

    original_init = client_mod.FloraClient.__init__

    def init(self: Any, *args: Any, **kw: Any) -> None:
        original_init(self, *args, **kw)
        self._gate = asyncio.Semaphore(limit or 1 << 30)

    client_mod.FloraClient.__init__ = init  # type: ignore[method-assign]


def premigrate(ledger: Path) -> None:
    """Create and migrate the ledger outside the measured window (a one-time cost)."""
    Ledger.open(str(ledger)).close()


def run_flora(
    manifest: Path,
    *,
    base_url: str,
    ledger: Path,
    results: Path,
    concurrency: int,
    scale: float,
    transport: str = "default",
    record: bool = False,
    max_poll: float = 30.0,
    submit_rate: float = 0.0,
    max_runtime: float | None = None,
    gate: int | None = None,
) -> dict[str, Any]:
    """One batch; returns CPU seconds (this process, around the batch only) and counts."""
    import asyncio

    m = load_manifest(manifest)
    settings = Settings(
        base_url=base_url,
        api_key="sk_test_emulator",
        ledger=str(ledger),
        results=results,
        concurrency=concurrency,
        min_poll=2.0 / scale,
        max_poll=max_poll / scale,
        submit_rate=submit_rate,
        max_runtime=max_runtime,
        progress=False,
    )
    premigrate(ledger)
    if gate is not None:
        gate_client(gate)
    log = PollLog()
    inner = make_transport(transport)
    if record:
        # What FloraClient ships (aiohttp's transport unless FLORA_BATCH_HTTP=httpx).
        inner = RecordingTransport(inner or shipped_transport(), log)

    t0 = os.times()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result: BatchResult = asyncio.run(run_batch(m, settings, transport=inner))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    t1 = os.times()
    counts = {str(k): v for k, v in result.outcome.counts.items() if v}
    return {
        "cpu": cpu,
        "user": t1.user - t0.user,
        "sys": t1.system - t0.system,
        "wall": wall,
        "counts": counts,
        "stopped": result.outcome.stopped,
        "polls": {k: v for k, v in log.polls.items()} if record else None,
    }

"""flora-batch itself, driven in-process through ``pipeline.run_batch`` (ledger and all).

``transport`` selects the HTTP stack behind the same ``FloraClient`` (``None`` is what
``client.py`` builds today).  A ``RecordingTransport`` wraps it to log every poll, for the
polling scenario.  ``poll_policy="proposed"`` swaps the worker's ``_next_poll_delay``
for the policy proposed in docs/performance.md (measured here, not shipped: worker.py
belongs to its owner).
"""

from __future__ import annotations

import time
import types
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from flora_batch.config import Settings
from flora_batch.ledger import Ledger
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import BatchResult, run_batch
from flora_batch.types import JobKey, RunInfo
from flora_batch.worker import Worker

#: FloraClient's pool today (client.py: max_connections=32, keep-alive the same).
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
    """``default`` (None: client.py decides), ``httpcoreN`` (a pool of N) or ``aiohttp``."""
    if kind == "default":
        return None
    if kind == "httpcore":
        return httpx.AsyncHTTPTransport(limits=CLIENT_LIMITS)
    if kind.startswith("httpcore"):  # httpcoreN: a pool of N connections
        n = int(kind.removeprefix("httpcore"))
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        return httpx.AsyncHTTPTransport(limits=limits)
    if kind == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=CLIENT_LIMITS)
    raise ValueError(kind)


def gate_client(limit: int) -> None:
    """Resize FloraClient's request gate in this process; ``0`` takes the gate away.

    client.py lets at most ``max_connections`` requests into httpx at once (the rest
    wait on a semaphore); ``0`` measures flora-batch as it was before that change.
    """
    import asyncio

    from flora_batch import client as client_mod

    original_init = client_mod.FloraClient.__init__

    def init(self: Any, *args: Any, **kw: Any) -> None:
        original_init(self, *args, **kw)
        self._gate = asyncio.Semaphore(limit or 1 << 30)

    client_mod.FloraClient.__init__ = init  # type: ignore[method-assign]


def premigrate(ledger: Path) -> None:
    """Create and migrate the ledger outside the measured window (a one-time cost)."""
    Ledger.open(str(ledger)).close()


def proposed_poll_delay(self: Worker, key: JobKey, run: RunInfo) -> float:
    """The proposed ``Worker._next_poll_delay`` (docs/performance.md, scenario 3).

    Predict the run's end, poll just after it (``min_poll / 2`` late), and re-predict at
    every poll, which comes at least every ``max_poll``:

    * running with progress: the end is ``started_at + ran / progress`` from the run's
      own ``started_at`` (server time; its queue wait is not running time, and counting
      it, as today, predicts 2-10x too late, hence the max_poll ladder and late notice),
      with the whole-percent progress taken at its midpoint (p + 0.5);
    * otherwise, once runs of this technique have completed: ``created_at`` plus their
      median *server-side* duration (``completed_at - created_at``; today's list holds
      submit-to-noticed times, which include our own polling lag and grow with it);
    * otherwise (nothing known yet): wait as long as the run has existed, at least
      4 x min_poll (8 s, 16 s, 30 s ... after submit): most runs are still queued at first.

    Past the predicted end, poll every min_poll.  Server times are mapped to our clock by
    the offset seen at create (``created_at`` vs. ``submitted_at``).
    """
    s = self.settings
    now = self.clock()
    rec = self.jobs[key]
    submitted = rec.submitted_at or now
    offset = (run.created_at / 1000.0 - submitted) if run.created_at else 0.0
    learned: dict[str, list[float]] = self.__dict__.setdefault("_server_durations", {})
    seen = sorted(learned.get(rec.technique, ()))
    end: float | None = None
    if run.started_at and run.progress and 0 < run.progress < 100:
        started = run.started_at / 1000.0 - offset
        end = started + (now - started) * 100.0 / (run.progress + 0.5)
    elif seen and run.created_at:
        end = run.created_at / 1000.0 - offset + seen[len(seen) // 2]
    if end is not None:
        wait = end - now + s.min_poll / 2 if end > now else s.min_poll
    else:
        wait = max(4 * s.min_poll, now - submitted)
    return float(min(max(wait, s.min_poll), s.max_poll))


def _learn_server_durations(worker: Worker) -> None:
    """Wrap ``_completed`` to keep each technique's server-side run durations."""
    original = worker._completed

    def completed(key: JobKey, run: RunInfo) -> None:
        if run.completed_at and run.created_at:
            learned = worker.__dict__.setdefault("_server_durations", {})
            duration = (run.completed_at - run.created_at) / 1000.0
            learned.setdefault(worker.jobs[key].technique, []).append(duration)
        original(key, run)

    worker._completed = completed  # type: ignore[method-assign]


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
    poll_policy: str = "current",
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
        inner = RecordingTransport(inner or make_transport("httpcore"), log)  # type: ignore[arg-type]

    def hook(worker: Worker) -> None:
        if poll_policy == "proposed":
            worker._next_poll_delay = types.MethodType(proposed_poll_delay, worker)  # type: ignore[method-assign]
            _learn_server_durations(worker)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    result: BatchResult = asyncio.run(run_batch(m, settings, transport=inner, on_worker=hook))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    counts = {str(k): v for k, v in result.outcome.counts.items() if v}
    return {
        "cpu": cpu,
        "wall": wall,
        "counts": counts,
        "stopped": result.outcome.stopped,
        "polls": {k: v for k, v in log.polls.items()} if record else None,
    }

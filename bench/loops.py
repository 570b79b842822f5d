"""The baselines: bare loops that make the same requests and write the same files, no ledger.

* ``httpx_loop``: asyncio + one ``httpx.AsyncClient`` (httpx's default transport unless a
  variant of the stack is being measured).
* ``aiohttp_loop``: asyncio + one ``aiohttp.ClientSession``.
* ``naive``: one job at a time: submit, poll every 3 s (scaled), download.
* ``fixed_poller``: every run polled every 2 s (scaled), all in flight at once.

Per job: ``POST /techniques/{slug}/runs``; wait ``first_wait``; ``GET`` the run every
``interval`` until it is terminal; ``GET`` each media output and write it to
``results/<slug>/<row>-<output_id><ext>`` (text outputs are written from the run object).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Job = tuple[str, str, str]  # slug, input slot, image url
EXT = {"imageUrl": ".png", "videoUrl": ".mp4", "text": ".txt"}


@dataclass
class LoopConfig:
    base_url: str
    api_key: str
    jobs: list[Job]
    results: Path
    concurrency: int
    first_wait: float
    interval: float
    key_prefix: str = "bare"


@dataclass
class Trace:
    """What a loop saw: per-run poll times, when each completion was noticed."""

    polls: dict[str, list[float]] = field(default_factory=dict)
    noticed: dict[str, float] = field(default_factory=dict)
    done: int = 0
    failed: int = 0


Get = Callable[[str], Awaitable[tuple[int, Any, bytes]]]
Post = Callable[[str, dict[str, Any], dict[str, str]], Awaitable[tuple[int, Any]]]


async def one_job(
    index: int, job: Job, cfg: LoopConfig, get: Get, post: Post, trace: Trace
) -> None:
    """Create, wait, poll until terminal, download every media output."""
    slug, slot, url = job
    key = f"{cfg.key_prefix}-{index}"
    body = {
        "inputs": [{"id": slot, "type": "imageUrl", "value": url}],
        "mode": "async",
        "idempotency_key": key,
    }
    status, run = await post(
        f"{cfg.base_url}/techniques/{slug}/runs", body, {"Idempotency-Key": key}
    )
    if status >= 300:
        raise RuntimeError(f"create failed: {status} {run}")
    run_id = run["run_id"]
    poll_url = f"{cfg.base_url}/techniques/{slug}/runs/{run_id}"
    await asyncio.sleep(cfg.first_wait)
    times = trace.polls.setdefault(run_id, [])
    while True:
        _, run, _ = await get(poll_url)
        times.append(time.time())
        if run["status"] in ("completed", "failed"):
            trace.noticed[run_id] = time.time()
            break
        await asyncio.sleep(cfg.interval)
    if run["status"] == "failed":
        trace.failed += 1
        return
    folder = cfg.results / slug
    folder.mkdir(parents=True, exist_ok=True)
    for out in run["outputs"]:
        dest = folder / f"r{index:06d}-{out['output_id']}{EXT.get(out['type'], '.bin')}"
        if out["type"] == "text":
            dest.write_text(out["url"], encoding="utf-8")
            continue
        status, _, data = await get(out["url"])
        if status != 200:
            raise RuntimeError(f"download failed: {status}")
        dest.write_bytes(data)
    trace.done += 1


async def _all(cfg: LoopConfig, get: Get, post: Post) -> Trace:
    trace = Trace()
    sem = asyncio.Semaphore(cfg.concurrency)

    async def bounded(i: int, job: Job) -> None:
        async with sem:
            await one_job(i, job, cfg, get, post, trace)

    await asyncio.gather(*(bounded(i, j) for i, j in enumerate(cfg.jobs)))
    return trace


async def httpx_loop(cfg: LoopConfig, client_kw: dict[str, Any] | None = None) -> Trace:
    """The bare httpx loop; ``client_kw`` (transport, limits, http2) selects a stack variant."""
    import httpx

    auth = {"Authorization": f"Bearer {cfg.api_key}"}
    async with httpx.AsyncClient(**(client_kw or {})) as client:

        async def get(url: str) -> tuple[int, Any, bytes]:
            r = await client.get(url, headers=auth if "/api/" in url else None)
            data = r.content
            return r.status_code, (r.json() if "/api/" in url else None), data

        async def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
            r = await client.post(url, json=body, headers={**auth, **headers})
            return r.status_code, r.json()

        return await _all(cfg, get, post)


async def aiohttp_loop(cfg: LoopConfig) -> Trace:
    """The bare aiohttp loop (aiohttp's defaults, one session)."""
    import aiohttp

    auth = {"Authorization": f"Bearer {cfg.api_key}"}
    async with aiohttp.ClientSession() as session:

        async def get(url: str) -> tuple[int, Any, bytes]:
            async with session.get(url, headers=auth if "/api/" in url else None) as r:
                data = await r.read()
                return r.status, (await r.json() if "/api/" in url else None), data

        async def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
            async with session.post(url, json=body, headers={**auth, **headers}) as r:
                return r.status, await r.json()

        return await _all(cfg, get, post)


def naive_config(cfg: LoopConfig) -> LoopConfig:
    """The naive script is the httpx loop with one job at a time."""
    return LoopConfig(**{**cfg.__dict__, "concurrency": 1})

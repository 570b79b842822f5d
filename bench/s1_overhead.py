"""Scenario 1: CPU per job, flora-batch against two bare loops, and the HTTP stack itself.

Every side runs the same jobs (technique ``wireframe``, one ~4 KB PNG each) against its
own fresh emulator subprocess at speed 100, so a run is over ~0.2 s after its create
but not at the create: every side makes one create, waits 2 s, makes one poll and one
download, and writes one file.  ``min_poll = max_poll = 2 s`` holds flora-batch to the
same 2-s first poll.  What differs is the CPU spent per job, measured in each client
process (``time.process_time`` around the work; start-up and imports excluded; the
ledger is created and migrated before the clock starts).

The three main sides run in interleaved rounds (order rotated) and the reported figure
is the median over rounds, as is each ratio (computed within a round).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import emulator, job_list, median, run_measured, write_manifest
from .report import Row

TECHNIQUES = (("wireframe", "photo"),)
SPEED = 100.0  # wireframe: 1.6 s queue + 20 s run -> 0.22 s, well inside the 2-s wait
WAIT = 2.0


@dataclass
class Sizes:
    rounds: int = 5
    jobs: int = 200  # per side per round
    concurrency: int = 100
    stack_jobs: int = 200  # per stack variant per round


def _spec(side: str, work: Path, n: int, concurrency: int, tag: str, **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"side": side, "concurrency": concurrency, **kw}
    if side == "flora":
        manifest = write_manifest(work / f"m{n}", n, techniques=TECHNIQUES)
        spec.update(
            manifest=str(manifest),
            ledger=str(work / f"{tag}.db"),
            results=str(work / f"{tag}-results"),
            scale=1.0,
            max_poll=WAIT,
        )
    else:
        spec.update(
            jobs=job_list(n, TECHNIQUES),
            results=str(work / f"{tag}-results"),
            first_wait=WAIT,
            interval=WAIT,
        )
    return spec


def measure(spec: dict[str, Any], n: int, server: str = "uvicorn") -> dict[str, float]:
    """One side against its own emulator; CPU ms per job, wall, emulator CPU."""
    with emulator(SPEED, server=server) as emu:
        cpu0 = emu.cpu_seconds()
        got = run_measured([json.dumps({**spec, "base_url": emu.base_url})])
        emu_cpu = emu.cpu_seconds() - cpu0
    data = got.data
    finished = data.get("done", (data.get("counts") or {}).get("done", 0))
    if finished != n:
        raise RuntimeError(f"{spec['side']} finished {finished} of {n} jobs: {data}")
    return {"ms": 1000 * data["cpu"] / n, "wall": data["wall"], "emu_ms": 1000 * emu_cpu / n}


MAIN = {
    "flora": ("flora", {}),
    "httpx": ("httpx", {"stack": "default"}),
    "aiohttp": ("aiohttp", {}),
}

#: The HTTP stack, measured behind the same interface (name -> side, spec extras, server).
STACK: dict[str, tuple[str, dict[str, Any], str]] = {
    "bare aiohttp": ("aiohttp", {}, "uvicorn"),
    "httpx default, no sniffio": ("httpx", {"stack": "default", "sniffio": "absent"}, "uvicorn"),
    "httpx default + sniffio": ("httpx", {"stack": "default", "sniffio": "present"}, "uvicorn"),
    "httpx pool 32/32, no sniffio": ("httpx", {"stack": "pool32", "sniffio": "absent"}, "uvicorn"),
    "httpx pool 32/32 + sniffio": ("httpx", {"stack": "pool32", "sniffio": "present"}, "uvicorn"),
    "httpx pool 256/256, no sniffio": (
        "httpx",
        {"stack": "pool256", "sniffio": "absent"},
        "uvicorn",
    ),
    "httpx + httpx-aiohttp transport": ("httpx", {"stack": "aiohttp"}, "uvicorn"),
    "httpx + flora_batch.remote.transport": ("httpx", {"stack": "flora"}, "uvicorn"),
    "httpx HTTP/1.1 (Hypercorn)": (
        "httpx",
        {"stack": "http1-pool32", "sniffio": "absent"},
        "hypercorn",
    ),
    "httpx HTTP/2 (Hypercorn)": ("httpx", {"stack": "http2", "sniffio": "absent"}, "hypercorn"),
    "flora-batch, no sniffio, ungated": ("flora", {"sniffio": "absent", "gate": 0}, "uvicorn"),
    "flora-batch + sniffio, ungated": ("flora", {"sniffio": "present", "gate": 0}, "uvicorn"),
    "flora-batch, no sniffio (as shipped)": ("flora", {"sniffio": "absent"}, "uvicorn"),
    "flora-batch + sniffio (as shipped)": ("flora", {"sniffio": "present"}, "uvicorn"),
    "flora-batch + httpx-aiohttp transport": (
        "flora",
        {"transport": "aiohttp", "sniffio": "absent"},
        "uvicorn",
    ),
    "flora-batch on httpx's transport (FLORA_BATCH_HTTP=httpx)": (
        "flora",
        {"transport": "httpx", "sniffio": "present"},
        "uvicorn",
    ),
}


def per_request_ms(raw: dict[str, Any]) -> float:
    """The bare httpx loop's CPU per request (a job is a create, a poll and a download)."""
    return median([m["ms"] for m in raw["main"]["httpx"]]) / 3


def run(work: Path, sizes: Sizes) -> tuple[list[Row], dict[str, Any]]:
    """The main comparison, in interleaved rounds."""
    per: dict[str, list[dict[str, float]]] = {k: [] for k in MAIN}
    order = list(MAIN)
    for r in range(sizes.rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            side, extra = MAIN[name]
            spec = _spec(side, work, sizes.jobs, sizes.concurrency, f"r{r}-{name}", **extra)
            per[name].append(measure(spec, sizes.jobs))
    ms = {k: median([m["ms"] for m in v]) for k, v in per.items()}
    vs_httpx = median([f["ms"] / h["ms"] for f, h in zip(per["flora"], per["httpx"], strict=True)])
    vs_aio = median([f["ms"] / a["ms"] for f, a in zip(per["flora"], per["aiohttp"], strict=True)])
    httpx_vs_aio = median(
        [h["ms"] / a["ms"] for h, a in zip(per["httpx"], per["aiohttp"], strict=True)]
    )
    n = sizes.jobs * sizes.rounds
    rows = [
        Row(
            "1",
            f"CPU/job, flora vs bare httpx ({n} jobs/side)",
            f"{ms['flora']:.2f} ms",
            f"{ms['httpx']:.2f} ms",
            f"{vs_httpx:.2f}×",
            "≤ 1.00×",
            vs_httpx <= 1.0,
        ),
        Row(
            "1",
            "CPU/job, flora vs bare aiohttp",
            f"{ms['flora']:.2f} ms",
            f"{ms['aiohttp']:.2f} ms",
            f"{vs_aio:.2f}×",
            "≤ 2.00×",
            vs_aio <= 2.0,
        ),
        Row(
            "1",
            "CPU/job, bare httpx vs bare aiohttp (the stack)",
            f"{ms['httpx']:.2f} ms",
            f"{ms['aiohttp']:.2f} ms",
            f"{httpx_vs_aio:.2f}×",
            "(info; ~3.5× before)",
            None,
        ),
    ]
    return rows, {"main": per}


def run_stack(work: Path, sizes: Sizes) -> tuple[list[Row], dict[str, Any]]:
    """Every stack variant, ``sizes.rounds`` times in rotated order; medians per variant."""
    variants: dict[str, list[dict[str, float]]] = {name: [] for name in STACK}
    names = list(STACK)
    for r in range(sizes.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            side, extra, server = STACK[name]
            spec = _spec(
                side,
                work,
                sizes.stack_jobs,
                sizes.concurrency,
                f"s{r}-{names.index(name)}",
                **extra,
            )
            variants[name].append(measure(spec, sizes.stack_jobs, server))
    ms = {name: median([m["ms"] for m in v]) for name, v in variants.items()}
    aio = ms["bare aiohttp"]
    base = ms["httpx default, no sniffio"]
    rows = [
        Row(
            "1s",
            name,
            f"{value:.2f} ms",
            f"{base:.2f} ms (httpx default, no sniffio)",
            f"{value / base:.2f}× · {value / aio:.1f}× aiohttp",
            "(info)",
            None,
        )
        for name, value in ms.items()
    ]
    return rows, {"stack": variants}

"""Scenario 2: a latency-bound batch against an account that runs at most C runs at once.

Six techniques of 20-150 s (one output each) over the same rows, every run time
divided by the emulator's ``SPEED``; flora-batch's min_poll/max_poll and create pace are
divided by the same factor.  The *ideal schedule* is what the emulator itself would do
if every job were created at t=0 in flora-batch's order: its own FIFO rule
(``emulator.runs.schedule``) over the catalog's queue and run times, with at most C
running.  The naive script does one job at a time (create, poll every 3 s scaled,
download); it runs on the first jobs only and its time per job is extrapolated (it is
strictly sequential, so that is exact up to noise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from flora_batch.emulator import load_catalog
from flora_batch.emulator.runs import queue_seconds, schedule

from .common import emulator, job_list, run_measured, write_manifest
from .report import Row

TECHNIQUES = (
    ("wireframe", "photo"),  # 20 s
    ("relight-technique", "photo"),  # 30 s
    ("moodboard-maker", "photo"),  # 40 s
    ("product-lookbook-grid", "product"),  # 45 s
    ("sigil", "image"),  # 120 s, video
    ("product-motion", "product"),  # 150 s, video
)


@dataclass
class Sizes:
    rows: int = 12  # x 6 techniques = 72 jobs
    max_running: int = 8  # C
    speed: float = 50.0
    naive_jobs: int = 6


def ideal_seconds(jobs: list[tuple[str, str, str]], max_running: int, speed: float) -> float:
    """Makespan of the emulator's own schedule with every job created at t=0."""
    catalog = load_catalog()
    earlier: list[Any] = []
    for slug, _, _ in jobs:
        typical = catalog.get(slug).typical_seconds  # type: ignore[union-attr]
        run = typical / speed
        start = schedule(queue_seconds(typical) / speed, run, earlier, max_running)
        earlier.append(SimpleNamespace(started_at=start, ended_at=start + run))
    return float(max(r.ended_at for r in earlier))


def _flora(work: Path, manifest: Path, sizes: Sizes, concurrency: int, tag: str) -> float:
    with emulator(sizes.speed, sizes.max_running) as emu:
        spec = {
            "side": "flora",
            "manifest": str(manifest),
            "base_url": emu.base_url,
            "ledger": str(work / f"{tag}.db"),
            "results": str(work / f"{tag}-results"),
            "concurrency": concurrency,
            "scale": sizes.speed,
            "submit_rate": 5.0 * sizes.speed,
        }
        got = run_measured([json.dumps(spec)])
    done = (got.data.get("counts") or {}).get("done", 0)
    if done != sizes.rows * len(TECHNIQUES):
        raise RuntimeError(f"scenario 2: flora-batch finished {done} jobs: {got.data}")
    return float(got.data["wall"])


def _naive(work: Path, jobs: list[tuple[str, str, str]], sizes: Sizes) -> float:
    with emulator(sizes.speed, sizes.max_running) as emu:
        spec = {
            "side": "httpx",
            "jobs": jobs,
            "base_url": emu.base_url,
            "results": str(work / "naive-results"),
            "concurrency": 1,
            "first_wait": 3.0 / sizes.speed,
            "interval": 3.0 / sizes.speed,
        }
        got = run_measured([json.dumps(spec)])
    return float(got.data["wall"]) / len(jobs)


def run(work: Path, sizes: Sizes) -> tuple[list[Row], dict[str, Any]]:
    manifest = write_manifest(work / "s2", sizes.rows, techniques=TECHNIQUES)
    jobs = job_list(sizes.rows, TECHNIQUES)
    c = sizes.max_running
    ideal = ideal_seconds(jobs, c, sizes.speed)
    over = _flora(work, manifest, sizes, 2 * c, "s2-2c")
    at_c = _flora(work, manifest, sizes, c, "s2-c")
    naive = _naive(work, jobs[: sizes.naive_jobs], sizes) * len(jobs)
    s = sizes.speed
    n = len(jobs)
    rows = [
        Row(
            "2",
            f"wall / ideal, {n} jobs, C={c}, concurrency 2C",
            f"{over * s / 60:.1f} min",
            f"ideal {ideal * s / 60:.1f} min",
            f"{over / ideal:.2f}×",
            "≤ 1.10×",
            over / ideal <= 1.10,
        ),
        Row(
            "2",
            "wall / ideal, concurrency = C",
            f"{at_c * s / 60:.1f} min",
            f"ideal {ideal * s / 60:.1f} min",
            f"{at_c / ideal:.2f}×",
            "(info)",
            None,
        ),
        Row(
            "2",
            "speed-up over the naive script",
            f"{over * s / 60:.1f} min",
            f"naive ≈ {naive * s / 3600:.1f} h",
            f"{naive / over:.1f}×",
            "(report)",
            None,
        ),
    ]
    raw = {
        "ideal": ideal,
        "flora_2c": over,
        "flora_c": at_c,
        "naive_estimate": naive,
        "speed": s,
        "jobs": n,
    }
    return rows, raw

"""Scenario 3: how often flora-batch polls a run, and how late it notices the end.

Five techniques of 30-120 s (plus FLORA's 2.4-9.6 s in the queue) over the same rows,
all in flight at once, time divided by ``SPEED`` (and min_poll/max_poll with it).  Every
poll flora-batch sends is logged by a transport wrapper; the emulator's state gives each
run's true end.  A poll counts as "noticing" when it is the first answer after that end.
The baseline polls every run every 2 s (scaled).  All figures are in real seconds
(scaled back).  flora-batch runs its shipped policy (``flora_batch.worker.polling``: predict
each run's end from its progress or from durations seen earlier, poll just after it).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import emulator, job_list, median, run_measured, write_manifest
from .report import Row

TECHNIQUES = (
    ("relight-technique", "photo"),  # 30 s
    ("moodboard-maker", "photo"),  # 40 s
    ("room-render", "floor_plan"),  # 60 s
    ("turn-any-product-into-4-ad-visuals", "product"),  # 90 s
    ("sigil", "image"),  # 120 s
)


@dataclass
class Sizes:
    rows: int = 18  # x 5 techniques = 90 runs
    speed: float = 15.0


@dataclass
class PollStats:
    polls_per_run: float
    median_delay: float  # real seconds
    p90_delay: float
    min_gap: float  # real seconds between two polls of one run, smallest seen
    runs: int


def stats(polls: dict[str, list[float]], ends: dict[str, float], speed: float) -> PollStats:
    """Per-run poll counts, detection delays and gaps, in real (unscaled) seconds."""
    delays, gaps, counts = [], [], []
    for run_id, end in ends.items():
        times = sorted(polls.get(run_id, []))
        counts.append(len(times))
        after = [t for t in times if t >= end]
        if after:
            delays.append((after[0] - end) * speed)
        gaps += [(b - a) * speed for a, b in itertools.pairwise(times)]
    delays.sort()
    return PollStats(
        polls_per_run=sum(counts) / max(1, len(counts)),
        median_delay=median(delays) if delays else float("nan"),
        p90_delay=delays[int(0.9 * (len(delays) - 1))] if delays else float("nan"),
        min_gap=min(gaps) if gaps else float("inf"),
        runs=len(ends),
    )


def _ends(state: dict[str, Any]) -> dict[str, float]:
    return {r["run_id"]: float(r["ended_at"]) for r in state["runs"]}


def _flora(work: Path, manifest: Path, sizes: Sizes) -> PollStats:
    n = sizes.rows * len(TECHNIQUES)
    with emulator(sizes.speed) as emu:
        spec = {
            "side": "flora",
            "manifest": str(manifest),
            "base_url": emu.base_url,
            "ledger": str(work / "s3.db"),
            "results": str(work / "s3-results"),
            "concurrency": n,
            "scale": sizes.speed,
            "submit_rate": 5.0 * sizes.speed,
            "record": True,
        }
        got = run_measured([json.dumps(spec)])
        ends = _ends(emu.state())
    return stats(got.data["polls"], ends, sizes.speed)


def _fixed(work: Path, sizes: Sizes) -> PollStats:
    jobs = job_list(sizes.rows, TECHNIQUES)
    with emulator(sizes.speed) as emu:
        spec = {
            "side": "httpx",
            "jobs": jobs,
            "base_url": emu.base_url,
            "results": str(work / "s3-fixed"),
            "concurrency": len(jobs),
            "first_wait": 2.0 / sizes.speed,
            "interval": 2.0 / sizes.speed,
            "record": True,
        }
        got = run_measured([json.dumps(spec)])
        ends = _ends(emu.state())
    return stats(got.data["polls"], ends, sizes.speed)


def run(work: Path, sizes: Sizes) -> tuple[list[Row], dict[str, Any]]:
    manifest = write_manifest(work / "s3", sizes.rows, techniques=TECHNIQUES)
    fixed = _fixed(work, sizes)
    now = _flora(work, manifest, sizes)
    rows = [
        Row(
            "3",
            f"polls per run ({now.runs} runs of 30-120 s)",
            f"{now.polls_per_run:.1f}",
            f"{fixed.polls_per_run:.1f} (fixed 2 s)",
            f"{now.polls_per_run:.1f}",
            "≤ 4",
            now.polls_per_run <= 4,
        ),
        Row(
            "3",
            "median detection delay (p90)",
            f"{now.median_delay:.1f} s ({now.p90_delay:.1f} s)",
            f"{fixed.median_delay:.1f} s (fixed 2 s)",
            f"{now.median_delay:.1f} s",
            "≤ 3 s",
            now.median_delay <= 3.0,
        ),
        Row(
            "3",
            "shortest gap between polls of one run",
            f"{now.min_gap:.2f} s",
            f"{fixed.min_gap:.2f} s",
            f"{now.min_gap:.2f} s",
            "≥ 2 s",
            now.min_gap >= 1.95,
        ),
    ]
    raw: dict[str, Any] = {"fixed": fixed.__dict__, "flora": now.__dict__}
    return rows, raw

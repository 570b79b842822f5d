"""Regression guards on ratios from ``bench/``: small, quick, and generous with noise.

Both compare flora-batch with a baseline measured in the same test, each in its own
process against its own emulator process, so a slow or busy machine moves both sides.
No absolute time is asserted.  ``make bench`` measures the same things at full size.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import s1_overhead, s3_polling
from bench.common import write_manifest

pytestmark = pytest.mark.slow

#: flora-batch spends ~0.6x the bare httpx loop's CPU per job at this size (aiohttp's transport,
#: one statement per ledger transition: docs/performance.md); this trips if that reaches 1.5x,
#: i.e. if flora-batch loses the lead the issue asks for, with room for noise.
MAX_CPU_RATIO = 1.5
#: flora-batch polls a 30-120 s run ~3.6 times (it predicts each run's end: polling.py)
#: where a fixed 2-s poller polls it ~21-30 times: 0.12-0.14, about half this limit.
MAX_POLL_RATIO = 0.25


def test_cpu_per_job_stays_near_the_bare_httpx_loop(tmp_path: Path) -> None:
    """flora-batch's CPU per job is within MAX_CPU_RATIO of a bare httpx loop's."""
    n, concurrency, scale = 150, 75, 4.0  # every side waits 0.5 s before its one poll
    ratios = []
    for side in ("flora", "httpx"):
        spec = s1_overhead._spec(side, tmp_path, n, concurrency, f"guard-{side}")
        if side == "flora":
            spec.update(scale=scale, max_poll=s1_overhead.WAIT)
        else:
            spec.update(first_wait=s1_overhead.WAIT / scale, interval=s1_overhead.WAIT / scale)
        ratios.append(s1_overhead.measure(spec, n)["ms"])
    flora_ms, httpx_ms = ratios
    assert flora_ms / httpx_ms <= MAX_CPU_RATIO, (flora_ms, httpx_ms)


def test_polls_per_run_stay_well_under_a_fixed_poller(tmp_path: Path) -> None:
    """flora-batch polls each run far less often than a fixed 2-s poller does."""
    sizes = s3_polling.Sizes(rows=4, speed=30.0)
    manifest = write_manifest(tmp_path / "s3", sizes.rows, techniques=s3_polling.TECHNIQUES)
    fixed = s3_polling._fixed(tmp_path, sizes)
    flora = s3_polling._flora(tmp_path, manifest, sizes)
    assert flora.runs == fixed.runs == sizes.rows * len(s3_polling.TECHNIQUES)
    assert flora.polls_per_run <= MAX_POLL_RATIO * fixed.polls_per_run, (flora, fixed)

"""Scenario 5: one big output, streamed to disk.

A ``MB``-MB file is served over loopback by ``bench.big_file serve`` (sendfile) in its
own process.  flora-batch's ``FloraClient.download`` (over its default aiohttp transport,
streamed in the chunks the socket delivers, up to 1 MB, hashed with sha256 and written on
the loop, size-checked) and a bare httpx stream-to-file each fetch it, alternately,
``reps`` times; the figures are medians.  RSS growth is the download's peak RSS over the
process's RSS before it (sampled every 10 ms).  flora-batch then fsyncs and renames the
file (``Results.commit``), reported apart: the bare loop does not fsync.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import REPO, _env, median, run_measured
from .report import Row


@dataclass
class Sizes:
    mb: int = 500
    reps: int = 3


@contextmanager
def file_server(path: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.big_file", "serve", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        yield f"http://127.0.0.1:{port}/big.bin"
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(10)


def _make(path: Path, mb: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        for _ in range(mb):
            fh.write(block)


def run(work: Path, sizes: Sizes) -> tuple[list[Row], dict[str, Any]]:
    src = work / "s5-source.bin"
    _make(src, sizes.mb)
    got: dict[str, list[dict[str, Any]]] = {"flora": [], "httpx": []}
    try:
        with file_server(src) as url:
            for rep in range(sizes.reps):
                for side in ("flora", "httpx") if rep % 2 == 0 else ("httpx", "flora"):
                    spec = {
                        "side": side,
                        "url": url,
                        "dest": str(work / f"s5-{side}.bin"),
                        "commit": side == "flora",
                    }
                    got[side].append(
                        run_measured(["fetch", json.dumps(spec)], module="bench.big_file").data
                    )
    finally:
        src.unlink(missing_ok=True)
    size = sizes.mb * (1 << 20)
    if any(r["size"] != size for r in got["flora"] + got["httpx"]):
        raise RuntimeError("scenario 5: a download came back short")
    mbps = {k: median([sizes.mb / r["wall"] for r in v]) for k, v in got.items()}
    ratio = median([h["wall"] / f["wall"] for f, h in zip(got["flora"], got["httpx"], strict=True)])
    growth = max(r["rss_growth"] for r in got["flora"])
    base_growth = max(r["rss_growth"] for r in got["httpx"])
    commit = median([r["commit_seconds"] for r in got["flora"]])
    rows = [
        Row(
            "5",
            f"{sizes.mb} MB download: throughput",
            f"{mbps['flora']:.0f} MB/s",
            f"{mbps['httpx']:.0f} MB/s (bare httpx)",
            f"{100 * ratio:.0f}%",
            "≥ 80%",
            ratio >= 0.80,
        ),
        Row(
            "5",
            f"{sizes.mb} MB download: RSS growth (peak)",
            f"{growth:.1f} MB",
            f"{base_growth:.1f} MB",
            f"{growth:.1f} MB",
            "flat (≤ 32 MB)",
            growth <= 32,
        ),
        Row(
            "5",
            "then fsync + rename into place (Results.commit)",
            f"{commit:.2f} s",
            "—",
            f"{commit:.2f} s",
            "(info)",
            None,
        ),
    ]
    return rows, {"flora": got["flora"], "httpx": got["httpx"]}

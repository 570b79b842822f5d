"""The one table: rows of (scenario, metric, flora-batch, baseline, result, target, ✓/✗),
printed to the terminal and written into docs/performance.md with the machine and date.

Only the block between the two markers below is rewritten; the analysis around it in
docs/performance.md is prose kept by people.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .common import REPO

DOC = REPO / "docs" / "performance.md"
#: Generated blocks: ``results`` (``make bench``) and ``stack`` (``python -m bench --stack``).
MARKERS = {
    "results": (
        "<!-- bench:results:start (written by `make bench`; edit outside these markers) -->",
        "<!-- bench:results:end -->",
    ),
    "stack": (
        "<!-- bench:stack:start (written by `python -m bench --stack`) -->",
        "<!-- bench:stack:end -->",
    ),
}


@dataclass
class Row:
    """One line of the table; ``ok`` is None for rows that only inform."""

    scenario: str
    metric: str
    flora: str
    baseline: str
    result: str
    target: str
    ok: bool | None = None

    @property
    def mark(self) -> str:
        return {True: "✓", False: "✗", None: "·"}[self.ok]


HEADERS = ("#", "Metric", "flora-batch", "Baseline (same run)", "Result", "Target", "")


def table(rows: list[Row]) -> str:
    """A Markdown table (also readable in a terminal)."""
    cells = [HEADERS] + [
        (r.scenario, r.metric, r.flora, r.baseline, r.result, r.target, r.mark) for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]

    def line(c: tuple[str, ...]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(c) for c in cells[1:])])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _commit() -> str:
    """HEAD's short hash, ``+changes`` when the work tree differs from it (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return (head or "?") + (" + uncommitted changes" if dirty else "")
    except OSError:
        return "?"


def machine() -> str:
    """One paragraph: what this ran on, when, and the load it shared the machine with."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    libs = ", ".join(
        f"{n} {_version(n)}"
        for n in ("httpx", "httpcore", "anyio", "sniffio", "aiohttp", "httpx-aiohttp", "sqlalchemy")
    )
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Run {now} at commit {_commit()} on {_cpu_model()}, {os.cpu_count()} cores, "
        f"{mem:.0f} GiB, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; load average at start {load}.  {libs}."
    )


def write_doc(header: str, rows: list[Row], notes: list[str], block_name: str = "results") -> None:
    """Replace one generated block of docs/performance.md (create the file if needed)."""
    start, end = MARKERS[block_name]
    block = "\n".join([start, "", header, "", table(rows), "", *(f"- {n}" for n in notes), "", end])
    text = DOC.read_text() if DOC.exists() else "# Performance\n"
    if start in text and end in text:
        before = text.split(start, 1)[0]
        after = text.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)

"""``python -m bench`` (``make bench``): every scenario, one table, docs/performance.md.

Each scenario compares flora-batch with a baseline measured in the same run, in separate
processes, against an emulator in its own process.  The table goes to the terminal and
into docs/performance.md (between the markers), with the machine and the date.

Options: ``--only 1,3`` runs some scenarios; ``--stack`` runs the HTTP-stack comparison
instead (httpx with and without sniffio, pool sizes, the httpx-aiohttp transport,
HTTP/2; about five minutes) into its own block; ``--quick`` shrinks every size (a smoke
run, not a measurement); ``--patient`` lets scenario 4's ``plan``/``run`` run past
their 20-s cap; ``--no-write`` leaves docs/performance.md alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import s1_overhead, s2_throughput, s3_polling, s4_ledger, s5_download
from .report import Row, machine, table, write_doc


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "1": s1_overhead.Sizes(rounds=1, jobs=60, concurrency=60, stack_jobs=60),
            "2": s2_throughput.Sizes(rows=3, max_running=4, speed=100.0, naive_jobs=2),
            "3": s3_polling.Sizes(rows=3, speed=30.0),
            "4": s4_ledger.Sizes(rows=2_000, in_flight=500, runtime=4.0, give_up=60.0),
            "5": s5_download.Sizes(mb=20, reps=1),
        }
    return {
        "1": s1_overhead.Sizes(),
        "2": s2_throughput.Sizes(),
        "3": s3_polling.Sizes(),
        "4": s4_ledger.Sizes(),
        "5": s5_download.Sizes(),
    }


def _stack_notes(s1: Any) -> list[str]:
    return [
        f"Each variant: {s1.rounds} rounds × {s1.stack_jobs} jobs of scenario 1 (create, wait "
        f"2 s, poll, download), concurrency {s1.concurrency}, medians; CPU per job of the "
        "client process.  HTTP/2 is h2c (prior knowledge) to the same app under Hypercorn, "
        "compared with HTTP/1.1 to that same Hypercorn.",
        "'no sniffio' hides an installed sniffio at the cost of a real failed import "
        "(bench/side.py `_HideSniffio`).  'ungated'/'as shipped': without/with the request "
        "gate that client.py now puts in front of httpx's pool (see below).",
    ]


def _notes(sizes: dict[str, Any]) -> list[str]:
    s1, s2, s3, s4, s5 = (sizes[k] for k in "12345")
    notes = [
        f"Scaled to fit 5 minutes on 2 cores: scenario 1 runs {s1.rounds} rounds × {s1.jobs} "
        f"jobs per side (not 5,000), concurrency {s1.concurrency}; scenario 2 runs "
        f"{s2.rows * 6} jobs (not 2,000) at C={s2.max_running}, time ÷{s2.speed:g}; "
        f"scenario 3 runs {s3.rows * 5} runs, time ÷{s3.speed:g}; scenario 5 downloads "
        f"{s5.mb} MB.  Scenario 4 is full size ({s4.rows:,} rows; {s4.in_flight:,} in flight).",
        "CPU is each client process's own (time.process_time around the work); the emulator "
        "runs in another process.  Ratios are medians of per-round ratios.",
        "The HTTP-stack comparison is `python -m bench --stack` (its own block below).",
    ]
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default="1,2,3,4,5")
    parser.add_argument("--stack", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--patient", action="store_true", help="let scenario 4's plan/run take as long as they take"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    sizes = _sizes(args.quick)
    if args.patient:
        sizes["4"].cli_give_up = 900.0
    header = machine()
    print(header, flush=True)
    work = Path(tempfile.mkdtemp(prefix="flora-bench-"))
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        if args.stack:
            rows, raw["stack"] = s1_overhead.run_stack(work, sizes["1"])
        else:
            rows = _scenarios(work, sizes, only, raw, started)
    finally:
        (Path(tempfile.gettempdir()) / "flora-bench-last.json").write_text(
            json.dumps(raw, indent=1, default=str)
        )
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    took = time.perf_counter() - started
    header += f"  The bench took {took:.0f} s."
    print()
    print(table(rows))
    notes = _stack_notes(sizes["1"]) if args.stack else _notes(sizes)
    for note in notes:
        print(f"- {note}")
    print(f"(raw numbers: {Path(tempfile.gettempdir()) / 'flora-bench-last.json'})")
    if not args.no_write and not args.quick:
        write_doc(header, rows, notes, "stack" if args.stack else "results")
    return 0


def _scenarios(
    work: Path, sizes: dict[str, Any], only: set[str], raw: dict[str, Any], started: float
) -> list[Row]:
    """Run the chosen scenarios in order; each adds its rows (and raw numbers)."""
    rows: list[Row] = []
    per_request_ms = None
    steps: dict[str, Callable[[], tuple[list[Row], Any]]] = {
        "1": lambda: s1_overhead.run(work, sizes["1"]),
        "2": lambda: s2_throughput.run(work, sizes["2"]),
        "3": lambda: s3_polling.run(work, sizes["3"]),
        "4": lambda: s4_ledger.run(work, sizes["4"], per_request_ms),
        "5": lambda: s5_download.run(work, sizes["5"]),
    }
    for name, step in steps.items():
        if name not in only:
            continue
        got, raw[name] = step()
        rows += got
        if name == "1":
            per_request_ms = s1_overhead.per_request_ms(raw["1"])
        _progress(name, started)
    return rows


def _progress(name: str, started: float) -> None:
    print(f"  scenario {name} done at {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())

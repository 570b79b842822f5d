"""Scenario 4: the ledger at scale.

a) ``flora-batch plan`` and ``flora-batch run`` (real CLI subprocesses, peak RSS from
   ``wait4``) on a 100,000-row manifest whose jobs are all done, each with one tiny
   output file on disk, its ledger written as ``run`` writes it (with the plan memo,
   ``flora_batch/memo.py``).  The baseline is the same command on a 1-row manifest
   (start-up: imports, the ledger's migration check, one schema request).  Then both
   commands once more without the memo (as the first resume after an upgrade), which
   informs.  Last, the nightly case: 20 of the rows replaced by new ones, and ``run``
   buys and downloads those beside the 99,980 done ones (peak RSS).
b) 10,000 runs in flight at once: a ledger of 10,000 ``running`` jobs whose runs the
   emulator holds (preloaded, 300 s each, at real speed), resumed by ``run_batch`` with
   concurrency 10,000 for ``max_runtime`` seconds.  Peak RSS, and the scheduler's CPU
   over that time (the process's CPU, sampled from /proc, while it only polls).
   The baseline is the bare httpx loop's CPU per request from the same number of polls
   (``polls x per-request CPU``) -- what the polls alone should cost.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import IMAGE_HOST, _env, emulator, run_cmd, run_measured, write_manifest
from .report import Row

#: New rows in the appended resume (``_appended``).
NEW_ROWS = 20


@dataclass
class Sizes:
    rows: int = 100_000
    in_flight: int = 10_000
    runtime: float = 10.0  # seconds the 10,000-run batch is left to poll
    give_up: float = 60.0  # seconds after which the stuck 10,000-run process is killed
    cli_give_up: float = 20.0  # seconds after which `plan`/`run` are killed (4x the target)


def _cli(args: list[str], emu: Any, timeout: float) -> Any:
    env = {**_env(), "FLORA_BASE_URL": emu.base_url, "FLORA_API_KEY": "sk_test_emulator"}
    return run_cmd([sys.executable, "-m", "flora_batch", *args], env=env, timeout=timeout)


def _files_root(work: Path) -> Path:
    """Where the 100,000 tiny output files go: tmpfs when there is one (fast to make and
    delete; ``run`` still stats every one of them)."""
    shm = Path("/dev/shm")
    if shm.is_dir():
        return Path(tempfile.mkdtemp(prefix="flora-bench-", dir=shm))
    return work


def _all_done(work: Path, sizes: Sizes) -> tuple[list[Row], dict[str, Any]]:
    big = write_manifest(work / "s4-big", sizes.rows)
    one = write_manifest(work / "s4-one", 1)
    files = _files_root(work)
    raw: dict[str, Any] = {}
    try:
        with emulator(1.0) as emu:
            t0 = time.perf_counter()
            for manifest, name in ((big, "big"), (one, "one")):
                spec = {
                    "manifest": str(manifest),
                    "base_url": emu.base_url,
                    "state": "done",
                    "ledger": str(manifest.parent / "ledger.db"),
                    "results": str(files / name),
                }
                run_measured([json.dumps(spec)], module="bench.build_ledger")
            raw["build_seconds"] = time.perf_counter() - t0
            out = {}
            for name, manifest in (("big", big), ("one", one)):
                for cmd in ("plan", "run"):
                    out[f"{cmd}-{name}"] = _measure(cmd, manifest, files / name, emu, sizes)
            # The same resume once more without the plan memo (as after an upgrade of
            # flora-batch): every row rendered and keyed again.
            _forget_memos(big.parent / "ledger.db")
            for cmd in ("plan", "run"):
                out[f"{cmd}-cold"] = _measure(cmd, big, files / "big", emu, sizes)
            creates = emu.state()["request_counts"].get("POST /api/v1/techniques/{slug}/runs", 0)
        out["appended"] = _appended(big, files / "big", sizes)
    finally:
        shutil.rmtree(files, ignore_errors=True)
    raw.update(out, creates=creates)
    rows = [r for cmd in ("plan", "run") for r in _rows(cmd, out, creates, sizes)]
    cold = [_cold_row(cmd, out, sizes) for cmd in ("plan", "run")]
    return [*rows, *cold, _appended_row(out)], raw


def _appended(manifest: Path, results: Path, sizes: Sizes) -> dict[str, Any]:
    """The nightly case: the first ``NEW_ROWS`` rows replaced by new ones (the file stays
    at 100,000 rows), then ``run`` against a fast emulator: the new jobs are bought and
    downloaded beside all the done ones, whose file names must be claimed first."""
    csv_file = manifest.parent / f"{manifest.stem}.csv"
    lines = csv_file.read_text().splitlines()
    new = [f"new{i:06d},{IMAGE_HOST}/new-{i:06d}.jpg" for i in range(NEW_ROWS)]
    csv_file.write_text("\n".join([lines[0], *lines[NEW_ROWS + 1 :], *new]) + "\n")
    with emulator(1000.0) as fast:
        got = _measure("run", manifest, results, fast, sizes, sizes.cli_give_up * 3)
        creates = fast.state()["request_counts"].get("POST /api/v1/techniques/{slug}/runs", 0)
    return {**got, "creates": creates}


def _appended_row(out: dict[str, Any]) -> Row:
    a = out["appended"]
    ok = a["rc"] == 0 and a["creates"] == NEW_ROWS
    note = "" if ok else f" (exit {a['rc']}, {a['creates']} creates)"
    return Row(
        "4",
        f"`run` on 100,000 rows, {NEW_ROWS} of them new (a nightly append): peak RSS",
        f"{a['rss']:.0f} MB (wall {a['wall']:.1f} s: 4 runs at a time, polls ≥ 2 s apart)",
        "—",
        f"{a['rss']:.0f} MB{note}",
        "≤ 500 MB",
        a["rss"] <= 500 and ok,
    )


def _measure(
    cmd: str, manifest: Path, results: Path, emu: Any, sizes: Sizes, give_up: float = 0.0
) -> dict[str, Any]:
    """``flora-batch plan|run`` on the manifest's ``ledger.db``: wall, peak RSS, CPU, exit."""
    ledger = str(manifest.parent / "ledger.db")
    args = [cmd, str(manifest), "--ledger", ledger, "--results", str(results)]
    got = _cli(["-q", *args] if cmd == "run" else args, emu, give_up or sizes.cli_give_up)
    return {
        "wall": got.wall,
        "rss": got.maxrss_mb,
        "cpu": got.rusage_cpu,
        "rc": got.data["returncode"],
    }


def _forget_memos(db: Path) -> None:
    """Delete the ledger's plan memos (``memo.py``), as a new flora-batch version would
    ignore them."""
    con = sqlite3.connect(db)
    with con:
        con.execute("DELETE FROM meta WHERE name LIKE 'plan-memo:%'")
    con.close()


def _cold_row(cmd: str, out: dict[str, Any], sizes: Sizes) -> Row:
    """The resume without a plan memo: informs (the target is for a batch ``run`` left)."""
    c, b = out[f"{cmd}-cold"], out[f"{cmd}-big"]
    wall = "killed" if c["rc"] == -9 else f"{c['wall']:.1f} s, {c['rss']:.0f} MB"
    return Row(
        "4",
        f"`{cmd}` on {sizes.rows:,} done jobs, no plan memo (first after an upgrade)",
        wall + ("" if c["rc"] in (0, -9) else f" (exit {c['rc']})"),
        f"{b['wall']:.1f} s (with the memo)",
        "",
        "informs",
        None,
    )


def _rows(cmd: str, out: dict[str, Any], creates: int, sizes: Sizes) -> list[Row]:
    b, o = out[f"{cmd}-big"], out[f"{cmd}-one"]
    killed = b["rc"] == -9
    ok_exit = b["rc"] == 0 and (cmd == "plan" or creates == 0)
    wall = f"> {sizes.cli_give_up:.0f} s (killed)" if killed else f"{b['wall']:.1f} s"
    rss = f"≥ {b['rss']:.0f} MB (killed)" if killed else f"{b['rss']:.0f} MB"
    failed = "" if ok_exit or killed else f" (exit {b['rc']})"
    return [
        Row(
            "4",
            f"`{cmd}` on {sizes.rows:,} done jobs: wall",
            wall,
            f"{o['wall']:.1f} s (1 row)",
            wall + failed,
            "≤ 5 s",
            b["wall"] <= 5.0 and ok_exit,
        ),
        Row(
            "4",
            f"`{cmd}` on {sizes.rows:,} done jobs: peak RSS",
            rss,
            f"{o['rss']:.0f} MB (1 row)",
            rss,
            "≤ 500 MB",
            b["rss"] <= 500 and not killed,
        ),
    ]


def _in_flight(
    work: Path, sizes: Sizes, per_request_ms: float | None
) -> tuple[list[Row], dict[str, Any]]:
    n = sizes.in_flight
    folder = work / "s4-flight"
    manifest = write_manifest(folder, n, techniques=(("ugc-creation", "product"),))
    ledger = str(folder / "ledger.db")
    with emulator(1.0) as emu:
        dump = folder / "jobs.json"
        base = {"manifest": str(manifest), "base_url": emu.base_url, "ledger": ledger}
        run_measured([json.dumps({**base, "dump_jobs": str(dump)})], module="bench.build_ledger")
        ids = emu.preload(dump)
        run_measured(
            [json.dumps({**base, "state": "running", "run_ids": ids})], module="bench.build_ledger"
        )
        spec = {
            "side": "flora",
            **base,
            "results": str(folder / "results"),
            "concurrency": n,
            "scale": 1.0,
            "max_runtime": sizes.runtime,
        }
        t0 = time.perf_counter()
        try:
            got = run_measured([json.dumps(spec)], sample_every=0.25, timeout=sizes.give_up)
            finished = True
        except RuntimeError as exc:  # killed after give_up seconds: report what was seen
            got, finished = None, False
            raw_err = str(exc)[-300:]
        wall = time.perf_counter() - t0
        polls = emu.state()["request_counts"].get("GET /api/v1/techniques/{slug}/runs/{run_id}", 0)
    if got is None:
        return [
            Row(
                "4",
                f"{n:,} runs in flight: resume and poll for {sizes.runtime:.0f} s",
                f"killed after {wall:.0f} s, {polls} polls",
                "—",
                "did not finish",
                "≤ 300 MB · small CPU",
                False,
            )
        ], {"error": raw_err, "polls": polls}
    cpu = float(got.data["cpu"])
    share = cpu / max(got.data["wall"], 1e-9)
    floor = polls * (per_request_ms or 0) / 1000
    rows = [
        Row(
            "4",
            f"{n:,} runs in flight: peak RSS",
            f"{got.maxrss_mb:.0f} MB",
            "—",
            f"{got.maxrss_mb:.0f} MB",
            "≤ 300 MB",
            got.maxrss_mb <= 300,
        ),
        Row(
            "4",
            f"{n:,} in flight: CPU over {sizes.runtime:.0f} s of polling ({polls:,} polls)",
            f"{cpu:.1f} s ({100 * share:.0f}% of a core)",
            f"{floor:.1f} s (bare httpx × polls)" if per_request_ms else "—",
            f"{cpu / max(floor, 1e-9):.1f}× the polls alone" if per_request_ms else "",
            "small (≤ 2× the polls alone)",
            (finished and cpu <= 2 * floor) if per_request_ms else None,
        ),
    ]
    raw = {
        "wall": wall,
        "rss": got.maxrss_mb,
        "cpu": cpu,
        "polls": polls,
        "samples": got.samples[::4],
        "finished": finished,
        "stopped": got.data.get("stopped"),
    }
    return rows, raw


def run(work: Path, sizes: Sizes, per_request_ms: float | None) -> tuple[list[Row], dict[str, Any]]:
    rows_a, raw_a = _all_done(work, sizes)
    rows_b, raw_b = _in_flight(work, sizes, per_request_ms)
    return rows_a + rows_b, {"all_done": raw_a, "in_flight": raw_b}

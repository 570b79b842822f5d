"""Where the CPU goes: ``python -m bench.profile {overhead,plan,run,flight} [--size N]``.

Runs one flora-batch side under ``py-spy record --gil`` (only samples that hold the
GIL: CPU work, not fsync or socket waits) and prints the functions with the largest
inclusive and self shares, plus a split by layer (ledger, HTTP stack, worker, ...).
The workloads are those of the scenarios: ``overhead`` is scenario 1's flora side,
``plan``/``run`` are the CLI on an all-done ledger of N rows (scenario 4a), ``flight``
resumes N runs in flight for 15 s (scenario 4b).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import REPO, _env, emulator, run_measured, write_manifest

LAYERS = (  # first match wins, from the innermost frame outwards
    ("ledger (SQLAlchemy + sqlite3)", ("flora_batch/ledger/", "sqlalchemy/")),
    (
        "HTTP stack (httpx, aiohttp, yarl, multidict; httpcore, h11)",
        ("httpx/", "httpcore/", "anyio/", "h11/", "aiohttp/", "yarl/", "multidict/", "propcache/"),
    ),
    ("retries (tenacity)", ("tenacity/",)),
    (
        "manifest, rows, keys, plan",
        (
            "flora_batch/manifest/",
            "flora_batch/keys",
            "flora_batch/plan",
            "flora_batch/naming",
        ),
    ),
    ("results (files, sha256)", ("flora_batch/results",)),
    ("asyncio", ("asyncio/",)),
)


#: The worker's modules (the loop and the parts it composes) and the client.
WORKER_MODULES = (
    "worker/",
    "retrying",
    "remote/",
)


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip().rpartition(" ")
    return [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")], int(count)


def summarise(raw: Path, root: str, top: int = 25) -> str:
    """Inclusive/self shares and a per-layer split of py-spy's raw (collapsed) output."""
    incl: collections.Counter[str] = collections.Counter()
    selfc: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        frames, n = _frames(line)
        at = next((i for i, f in enumerate(frames) if f.startswith(root)), None)
        if at is None:
            continue
        frames = frames[at:]
        total += n
        for name in set(frames):
            incl[name] += n
        selfc[frames[-1]] += n
        layers[_layer(frames)] += n
    out = [f"{total} samples under {root}", "", "by layer (innermost frame):"]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in layers.most_common()]
    out += ["", "inclusive:"]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in incl.most_common(top)]
    out += ["", "self:"]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in selfc.most_common(top // 2)]
    return "\n".join(out)


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in LAYERS:
            if any(n in frame for n in needles):
                return name
        if any(f"flora_batch/{m}" in frame for m in WORKER_MODULES):
            return "worker + client (flora_batch)"
    return "other"


def _spy(cmd: list[str], out: Path, env: dict[str, str] | None = None) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run(
        [spy, "record", "--gil", "-r", "250", "-f", "raw", "-o", str(out), "--", *cmd],
        env=env or _env(),
        cwd=REPO,
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("what", choices=["overhead", "plan", "run", "flight"])
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--save", type=Path, default=None, help="keep py-spy's raw output here")
    parser.add_argument(
        "--cold", action="store_true", help="plan/run: a ledger without the plan memo"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flora-profile-"))
    raw = work / "spy.txt"
    try:
        if args.what == "overhead":
            n = args.size or 600
            manifest = write_manifest(work, n)
            with emulator(100.0) as emu:
                spec = {
                    "side": "flora",
                    "manifest": str(manifest),
                    "base_url": emu.base_url,
                    "ledger": str(work / "l.db"),
                    "results": str(work / "r"),
                    "concurrency": 200,
                    "scale": 1.0,
                    "max_poll": 2.0,
                }
                _spy([sys.executable, "-m", "bench.side", json.dumps(spec)], raw)
            print(summarise(raw, "run_flora", args.top))
        elif args.what in ("plan", "run"):
            n = args.size or 100_000
            manifest = write_manifest(work, n)
            with emulator(1.0) as emu:
                spec = {
                    "manifest": str(manifest),
                    "base_url": emu.base_url,
                    "state": "done",
                    "ledger": str(work / "l.db"),
                    "results": str(work / "results"),
                    "no_memo": args.cold,
                }
                run_measured([json.dumps(spec)], module="bench.build_ledger")
                env = {
                    **_env(),
                    "FLORA_BASE_URL": emu.base_url,
                    "FLORA_API_KEY": "sk_test_emulator",
                }
                cli = [args.what, str(manifest), "--ledger", str(work / "l.db")]
                _spy(
                    [
                        sys.executable,
                        "-m",
                        "flora_batch",
                        *(["-q"] if args.what == "run" else []),
                        *cli,
                    ],
                    raw,
                    env,
                )
            print(summarise(raw, "_run_module_as_main", args.top))
        else:
            n = args.size or 10_000
            manifest = write_manifest(work, n, techniques=(("ugc-creation", "product"),))
            with emulator(1.0) as emu:
                base = {
                    "manifest": str(manifest),
                    "base_url": emu.base_url,
                    "ledger": str(work / "l.db"),
                }
                dump = work / "jobs.json"
                run_measured(
                    [json.dumps({**base, "dump_jobs": str(dump)})], module="bench.build_ledger"
                )
                ids = emu.preload(dump)
                run_measured(
                    [json.dumps({**base, "state": "running", "run_ids": ids})],
                    module="bench.build_ledger",
                )
                spec = {
                    "side": "flora",
                    **base,
                    "results": str(work / "r"),
                    "concurrency": n,
                    "scale": 1.0,
                    "max_runtime": 15.0,
                }
                _spy([sys.executable, "-m", "bench.side", json.dumps(spec)], raw)
            print(summarise(raw, "run_flora", args.top))
    finally:
        if args.save and raw.exists():
            shutil.copy(raw, args.save)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

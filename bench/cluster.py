"""Cluster scaling: one batch worked by 1, 2 and 4 `flora-batch worker` processes.

``python -m bench.cluster [--jobs 400] [--workers 1,2,4] [--per-worker 8] [--pg URL]``

The emulator runs in its own process (``bench.emu_proc``) at a high speed and the batch's
cluster-wide cap is far above what the workers keep in flight (``--per-worker`` each), so
the API is not the bottleneck: each worker's own latency and CPU are.  For each worker
count: a fresh PostgreSQL schema, ``flora-batch submit``, N workers started together with
``--exit-when-idle``; throughput is jobs / (last ``done`` − first claim), read from the
ledger's events.  Worker CPU comes from ``wait4``.  Needs PostgreSQL
(``FLORA_BATCH_TEST_PG_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``).

Expect throughput to grow with workers while the machine has cores to spare; on a 2-core
machine the emulator, PostgreSQL and the workers share them, so 4 workers gain less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from .common import API_KEY, REPO, emulator, write_manifest

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
SPEED = 100.0  # wireframe: a run is over ~0.2 s after its create
FAST = ["--min-poll", "0.1", "--max-poll", "0.5", "--idle-poll", "0.1"]


@contextmanager
def schema(base: str) -> Iterator[str]:
    """A fresh schema, dropped afterwards."""
    admin = create_engine(
        make_url(base).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    name = f"flora_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield (
            make_url(base)
            .update_query_dict({"options": f"-csearch_path={name}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


def _env(base_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLORA_")}
    env.update(FLORA_BASE_URL=base_url, FLORA_API_KEY=API_KEY, PYTHONPATH=str(REPO))
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "flora_batch", *args]


def _timeline(ledger: str) -> tuple[float, float, int]:
    """(first claim, last done, jobs done) from the ledger's events."""
    engine = create_engine(make_url(ledger).set(drivername="postgresql+psycopg"))
    try:
        with engine.connect() as conn:
            first = conn.execute(
                text('SELECT min(at) FROM events WHERE detail LIKE \'%"action":"claim"%\'')
            ).scalar_one()
            last, done = conn.execute(
                text("SELECT max(at), count(*) FROM events WHERE to_state = 'done'")
            ).one()
    finally:
        engine.dispose()
    return float(first), float(last), int(done)


def one(
    base_url: str, pg: str, work: Path, jobs: int, workers: int, per_worker: int
) -> dict[str, Any]:
    """One measurement: ``workers`` processes on a fresh batch of ``jobs`` jobs."""
    manifest = write_manifest(work / f"w{workers}", jobs, name=f"scale{workers}")
    env = _env(base_url)
    with schema(pg) as ledger:
        subprocess.run(
            _cli(
                "submit",
                str(manifest),
                "--ledger",
                ledger,
                "--concurrency",
                "256",
                "--rate",
                "0",
                "--json",
            ),
            check=True,
            env=env,
            capture_output=True,
            cwd=REPO,
        )
        procs = [
            subprocess.Popen(
                _cli(
                    "-q",
                    "worker",
                    "--ledger",
                    ledger,
                    "--exit-when-idle",
                    "--concurrency",
                    str(per_worker),
                    *FAST,
                ),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=REPO,
            )
            for _ in range(workers)
        ]
        cpu = 0.0
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "worker failed")
        first, last, done = _timeline(ledger)
    span = last - first
    return {
        "workers": workers,
        "jobs": done,
        "seconds": round(span, 2),
        "jobs_per_s": round(done / span, 1),
        "cpu_per_job_ms": round(cpu / done * 1000, 1),
    }


def main(argv: list[str] | None = None) -> None:
    """Measure and print one JSON line per worker count, then a table."""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--per-worker", type=int, default=8)
    parser.add_argument("--pg", default=os.environ.get("FLORA_BATCH_TEST_PG_URL", DEFAULT_PG))
    args = parser.parse_args(argv)
    rows = []
    with emulator(SPEED) as emu, tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.workers.split(",")):
            row = one(emu.base_url, args.pg, Path(tmp), args.jobs, n, args.per_worker)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'workers':>7} {'jobs':>5} {'seconds':>8} {'jobs/s':>7} {'CPU ms/job':>10}")
    for r in rows:
        print(
            f"{r['workers']:>7} {r['jobs']:>5} {r['seconds']:>8} {r['jobs_per_s']:>7} "
            f"{r['cpu_per_job_ms']:>10}"
        )
    base = rows[0]["jobs_per_s"]
    print("speed-up: " + ", ".join(f"{r['workers']}: x{r['jobs_per_s'] / base:.2f}" for r in rows))


if __name__ == "__main__":
    main()

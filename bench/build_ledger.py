"""Build a big ledger fast: ``python -m bench.build_ledger '<json spec>'`` (not measured).

The jobs are keyed and recorded exactly as ``flora-batch run`` does it (``pipeline.prepare``
against the emulator's schemas, which also leaves the plan memo, then
``Ledger.record_planned``; ``"no_memo": true`` leaves none).  One job is
then walked through the real transitions (``mark_submitting`` ... ``mark_done``);
driving 100,000 jobs that way would take ~5 transactions x 100,000 = minutes, so the
others are moved to the same state by one SQL transaction that sets the same columns,
checked against that reference job column by column (only the per-job event rows are
missing: the transitions' audit trail, which neither ``plan`` nor ``run`` reads).

``state: "done"`` also writes each job's one output as a tiny file (16 bytes) and records
its path, size and hash; ``state: "running"`` gives each job the run id that the
emulator preloaded for its idempotency key (``run_ids``, in plan order).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from flora_batch.config import Settings
from flora_batch.ledger import Ledger
from flora_batch.manifest import load_manifest
from flora_batch.manifest.jobs import build_keyed_jobs
from flora_batch.manifest.rows import load_rows
from flora_batch.pipeline import prepare
from flora_batch.remote.client import FloraClient
from flora_batch.types import JobKey, JobSpec, RunOutput

TINY = b"flora-bench-out\n"


async def _plan(spec: dict[str, Any], ledger: Ledger) -> list[tuple[JobKey, JobSpec]]:
    """``pipeline.prepare`` as ``run`` calls it (it leaves the plan memo), then the jobs
    recorded; the batch's every job is returned with its spec (for the bulk update)."""
    m = load_manifest(Path(spec["manifest"]))
    settings = Settings(base_url=spec["base_url"], api_key="sk_test_emulator")
    async with FloraClient(spec["base_url"], "sk_test_emulator") as client:
        prepared = await prepare(m, client, ledger, settings, remember=not spec.get("no_memo"))
    assert not prepared.skipped, prepared.skipped[:3]
    costs = {slug: t.run_cost for slug, t in prepared.techniques.items()}
    ledger.record_planned(prepared.new_jobs(), quoted_cost=costs, now=time.time())
    columns, rows = load_rows(m.rows, m.path)
    keyed, _ = build_keyed_jobs(m, columns, rows, prepared.techniques)
    assert [k for k, _ in keyed] == list(prepared.keys)
    return keyed


def _reference(
    ledger: Ledger, key: JobKey, state: str, run_id: str, path: Path, now: float
) -> None:
    """One job through the real transitions, as the worker would leave it."""
    ledger.mark_submitting(key, now=now)
    ledger.mark_running(key, run_id, now=now)
    if state != "done":
        return
    out = RunOutput("output_1", "imageUrl", f"http://127.0.0.1/_media/{run_id}/output_1.png")
    ledger.mark_downloading(key, [out], now=now, charged_cost=ledger.get(key).quoted_cost)
    sha = hashlib.sha256(TINY).hexdigest()
    ledger.save_output(  # the only output: the job is done with it
        key,
        "output_1",
        path=str(path),
        size=len(TINY),
        sha256=sha,
        content_type="image/png",
        now=now,
    )


def _bulk(db: Path, keyed: list[tuple[JobKey, Any]], spec: dict[str, Any], now: float) -> None:
    """Every other job to the reference job's state, in one transaction."""
    results = Path(spec.get("results", "."))
    run_ids = spec.get("run_ids") or [f"run_bench_{i:08d}" for i in range(len(keyed))]
    sha = hashlib.sha256(TINY).hexdigest()
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    jobs, outs = [], []
    for i, (key, job) in enumerate(keyed[1:], start=1):
        jobs.append((run_ids[i], now, now, key))
        if spec["state"] == "done":
            path = results / job.technique / f"{job.row_id}-output_1.png"
            outs.append(
                (
                    key,
                    f"http://127.0.0.1/_media/{run_ids[i]}/output_1.png",
                    str(path),
                    len(TINY),
                    sha,
                    now,
                )
            )
    if spec["state"] == "done":
        con.executemany(
            "UPDATE jobs SET state='done', run_id=?, submitted_at=?, completed_at=?, "
            "updated_at=?, charged_cost=quoted_cost WHERE key=? AND state='planned'",
            [(r, s, c, c, k) for r, s, c, k in jobs],
        )
        con.executemany(
            "INSERT INTO outputs (job_key, output_id, type, url, path, size, sha256, "
            "content_type, saved_at) VALUES (?, 'output_1', 'imageUrl', ?, ?, ?, ?, "
            "'image/png', ?)",
            outs,
        )
    else:
        con.executemany(
            "UPDATE jobs SET state='running', run_id=?, submitted_at=?, updated_at=? "
            "WHERE key=? AND state='planned'",
            jobs,
        )
    con.execute("COMMIT")
    if len(keyed) > 1:
        _check_like_reference(con, keyed[0][0], keyed[1][0])
    con.close()
    if spec["state"] == "done":
        for _key, job in keyed:
            folder = results / job.technique
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{job.row_id}-output_1.png").write_bytes(TINY)


def _check_like_reference(con: sqlite3.Connection, ref: str, other: str) -> None:
    """The bulk-made job has the reference job's state and the same columns filled in."""
    con.row_factory = sqlite3.Row
    a = dict(con.execute("SELECT * FROM jobs WHERE key=?", (ref,)).fetchone())
    b = dict(con.execute("SELECT * FROM jobs WHERE key=?", (other,)).fetchone())
    filled_a = {k for k, v in a.items() if v is not None}
    filled_b = {k for k, v in b.items() if v is not None}
    if a["state"] != b["state"] or filled_a != filled_b:
        raise SystemExit(f"bulk rows differ from the reference: {filled_a ^ filled_b}")
    oa = con.execute("SELECT * FROM outputs WHERE job_key=?", (ref,)).fetchall()
    ob = con.execute("SELECT * FROM outputs WHERE job_key=?", (other,)).fetchall()
    if len(oa) != len(ob):
        raise SystemExit("bulk outputs differ from the reference")


def main() -> None:
    arg = sys.argv[1]
    spec = json.loads(Path(arg[1:]).read_text() if arg.startswith("@") else arg)
    t0 = time.perf_counter()
    db = Path(spec["ledger"])
    ledger = Ledger.open(str(db))
    keyed = asyncio.run(_plan(spec, ledger))
    now = time.time()
    if spec.get("dump_jobs"):  # for the emulator's preload: [slug, inputs, key] per job
        rows = [
            [j.technique, [{"id": i.id, "type": i.type, "value": i.value} for i in j.inputs], k]
            for k, j in keyed
        ]
        Path(spec["dump_jobs"]).write_text(json.dumps(rows))
        ledger.close()
        print(json.dumps({"jobs": len(keyed), "seconds": time.perf_counter() - t0}))
        return
    first_key, first = keyed[0]
    run_ids = spec.get("run_ids") or [f"run_bench_{i:08d}" for i in range(len(keyed))]
    path = Path(spec.get("results", ".")) / first.technique / f"{first.row_id}-output_1.png"
    _reference(ledger, first_key, spec["state"], run_ids[0], path, now)
    ledger.close()
    _bulk(db, keyed, spec, now)
    print(json.dumps({"jobs": len(keyed), "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()

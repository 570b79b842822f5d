"""`flora-batch submit` and `flora-batch worker`, one behaviour at a time, as real processes.

Each test gets its own PostgreSQL schema and emulator; the verdicts come from the emulator's
books and the ledger's events (``cluster_helpers``).
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import time
from pathlib import Path

import pytest
from cluster_helpers import (
    Fleet,
    check_charged_once,
    check_exclusive,
    check_outputs,
    claim_details,
    counts,
    creators,
    holding,
    read,
    run,
    wait_for,
    write_batch,
)
from sqlalchemy import update

from flora_batch.emulator import FaultKind, FaultPlan
from flora_batch.ledger import Ledger
from flora_batch.ledger.leases import Leases
from flora_batch.ledger.tables import jobs as jobs_table
from flora_batch.remote.client import FloraClient
from flora_batch.types import JobState

pg = pytest.mark.postgres
CREATE = "POST /api/v1/techniques/{slug}/runs"


def submit(server, manifest: Path, ledger: str, *args: str) -> None:
    """``flora-batch submit`` that must succeed."""
    done = run(server, "submit", str(manifest), "--ledger", ledger, "--rate", "0", *args)
    assert done.returncode == 0, done.stdout + done.stderr


def finished(ledger: str, batch: str = "mugs") -> int:
    """Jobs of the batch in a terminal state."""
    c = counts(ledger, batch)
    return sum(n for s, n in c.items() if s.terminal)


@pg
def test_submit_records_the_batch_for_workers(serve, pg_url: str, tmp_path: Path):
    """submit plans the jobs and stores results, cap, budget and schemas; it buys nothing."""
    server = serve()
    manifest = write_batch(tmp_path / "b", 5, extra="max_cost: 1.5\n")
    submit(server, manifest, pg_url, "--concurrency", "3")
    with Ledger.open(pg_url) as ledger:
        batch = Leases(ledger).batch("mugs")
        pacing = Leases(ledger).pacing("mugs")
        assert ledger.counts("mugs")[JobState.PLANNED] == 5
    assert batch is not None and pacing is not None
    assert batch.results == str(tmp_path / "b" / "results")
    assert (batch.concurrency, batch.max_cost, batch.submit_rate) == (3, 1.5, 0.0)
    assert "studio-shot" in batch.techniques
    assert (pacing.in_flight_limit, pacing.max_limit) == (3, 3)
    assert server.emulator.request_counts[CREATE] == 0


@pg
def test_workers_exit_when_idle(serve, pg_url: str, tmp_path: Path):
    """Two --exit-when-idle workers finish the batch between them, then both exit 0."""
    server = serve()
    manifest = write_batch(tmp_path / "b", 24)
    submit(server, manifest, pg_url, "--concurrency", "4")
    fleet = Fleet(server, pg_url, tmp_path / "logs")
    try:
        for name in ("a", "b"):
            fleet.start(name, "--exit-when-idle", "--concurrency", "2")
        codes = [fleet.wait(name, 60) for name in ("a", "b")]
    finally:
        fleet.stop_all()
    assert codes == [0, 0], fleet.describe()
    assert "stopped: idle" in fleet.log("a") and "stopped: idle" in fleet.log("b")
    jobs, events = read(pg_url)
    check_charged_once(server.emulator, jobs)
    check_outputs(server.emulator, jobs, lambda p: Path(p).read_bytes())
    assert set(check_exclusive(events)) <= {"a", "b"}
    assert all(j.state is JobState.DONE for j in jobs)
    again = Fleet(server, pg_url, tmp_path / "logs2")
    again.start("late", "--exit-when-idle")
    assert again.wait("late", 30) == 0  # nothing left: a cron-started worker just exits


@pg
def test_sigterm_hands_jobs_back_and_the_others_take_them_at_once(
    serve, pg_url: str, tmp_path: Path
):
    """SIGTERM: the worker stops, hands back what it held (in flight too), exits 0; another
    takes those jobs at once (long before the lease would have run out) and finishes them."""
    server = serve(speed=15.0)  # runs last ~2 s: a SIGTERM finds them in flight
    manifest = write_batch(tmp_path / "b", 12)
    submit(server, manifest, pg_url, "--concurrency", "8")
    fleet = Fleet(server, pg_url, tmp_path / "logs")
    try:
        fleet.start("leaving", "--lease", "60", "--concurrency", "6")
        wait_for(lambda: holding(pg_url, "leaving") >= 4, 30, "jobs in flight")
        fleet.start("staying", "--lease", "60", "--concurrency", "8", "--exit-when-idle")
        assert fleet.terminate("leaving") == 0, fleet.describe()
        assert holding(pg_url, "leaving") == 0
        began = time.monotonic()
        assert fleet.wait("staying", 60) == 0, fleet.describe()
        assert time.monotonic() - began < 45, "the handed-back jobs waited for the lease"
    finally:
        fleet.stop_all()
    assert "stopped: interrupted" in fleet.log("leaving")
    jobs, events = read(pg_url)
    check_charged_once(server.emulator, jobs)
    check_outputs(server.emulator, jobs, lambda p: Path(p).read_bytes())
    check_exclusive(events)
    backs = [e for e in events if e["detail"].get("action") == "hand_back"]
    assert any(e["from_state"] in ("submitting", "running", "downloading") for e in backs)
    taken = [d for d in claim_details(events) if d["worker"] == "staying"]
    assert any(e["job_key"] for e in backs) and taken


@pg
@pytest.mark.parametrize("mode", ["replay", "conflict"])
def test_a_dead_workers_submitting_job_is_sent_again_only_with_its_key(
    serve, pg_url: str, tmp_path: Path, mode: str
):
    """A job left `submitting` by a worker that died after its create reached FLORA: once the
    lease runs out another worker takes it, sends it with the same key (or reconciles it
    on a 409) and adopts the run that already exists: charged once."""
    server = serve(idempotency=mode)
    manifest = write_batch(tmp_path / "b", 1)
    submit(server, manifest, pg_url)
    with Ledger.open(pg_url) as ledger:
        (job,) = Leases(ledger).claim("mugs", "ghost", 1, now=time.time(), lease=1.0)
        ledger.worker_id = "ghost"
        ledger.mark_submitting(job.key, now=time.time())
    created = asyncio.run(_create(server, job))  # the create lands; "ghost" dies before noting it
    assert server.emulator.charges_by_key() == {job.idempotency_key: 1}
    fleet = Fleet(server, pg_url, tmp_path / "logs")
    try:
        fleet.start("heir", "--lease", "2")  # it waits for the ghost's lease to run out
        wait_for(lambda: finished(pg_url) == 1, 60, "the job taken over and done")
        assert fleet.terminate("heir") == 0, fleet.describe()
    finally:
        fleet.stop_all()
    jobs, events = read(pg_url)
    (after,) = jobs
    assert after.state is JobState.DONE and after.run_id == created
    assert server.emulator.charges_by_key() == {job.idempotency_key: 1}
    assert server.emulator.request_counts[CREATE] == 2  # ghost's, then heir's with the same key
    (claim,) = [d for d in claim_details(events) if d["worker"] == "heir"]
    assert claim["previous"] == "ghost" and claim["previous_lease"] <= claim["lease_until"] - 2
    check_exclusive(events)


@pg
def test_a_dead_workers_run_of_an_edited_row_is_finished_under_superseded(
    serve, pg_url: str, tmp_path: Path
):
    """A worker died with a paid create in flight; the row is then edited and submitted
    again: the next worker finishes the old run into _superseded/ (its key, charged once)
    and buys the edited row once, each file under its own name."""
    server = serve()
    manifest = write_batch(tmp_path / "b", 1)
    submit(server, manifest, pg_url)
    with Ledger.open(pg_url) as ledger:
        (job,) = Leases(ledger).claim("mugs", "ghost", 1, now=time.time(), lease=1.0)
        ledger.worker_id = "ghost"
        ledger.mark_submitting(job.key, now=time.time())
    asyncio.run(_create(server, job))  # the create lands; "ghost" dies before noting it
    rows = manifest.parent / "products.csv"
    rows.write_text(rows.read_text().replace("mug-1.jpg", "cup-1.jpg"))
    submit(server, manifest, pg_url)
    fleet = Fleet(server, pg_url, tmp_path / "logs")
    try:
        fleet.start("heir", "--lease", "2", "--exit-when-idle")
        assert fleet.wait("heir", 60) == 0, fleet.describe()
    finally:
        fleet.stop_all()
    jobs, _ = read(pg_url)
    check_charged_once(server.emulator, jobs)
    check_outputs(server.emulator, jobs, lambda p: Path(p).read_bytes())
    results = tmp_path / "b" / "results"
    paths = {j.key: j.outputs[0].path for j in jobs}
    assert paths[job.key] == str(results / "_superseded/SKU-0001/studio-shot-output_1.png")
    (new,) = [k for k in paths if k != job.key]
    assert paths[new] == str(results / "SKU-0001/studio-shot-output_1.png")
    assert sorted(server.emulator.charges_by_key().values()) == [1, 1]


async def _create(server, job) -> str:
    async with FloraClient(server.base_url, server.api_key) as client:
        return (await client.create_run(job.technique, job.inputs, job.idempotency_key)).run_id


@pg
def test_a_429_seen_by_one_worker_slows_them_all(serve, pg_url: str, tmp_path: Path):
    """One 429 on a create pauses every worker's creates (not just the one that saw it)
    for the retry-after, and halves the cluster-wide in-flight limit."""
    server = serve(speed=60.0, faults=FaultPlan(retry_after=1.5))
    emu = server.emulator
    manifest = write_batch(tmp_path / "b", 60)
    submit(server, manifest, pg_url, "--concurrency", "8")
    fleet = Fleet(server, pg_url, tmp_path / "logs")
    try:
        for name in ("a", "b"):
            fleet.start(name, "--concurrency", "4", "--exit-when-idle")
        wait_for(lambda: creators(pg_url) >= {"a", "b"}, 40, "both workers creating runs")
        wait_for(lambda: finished(pg_url) >= 10, 40, "a first few jobs")
        paused = _force_a_create_429(emu, pg_url)
        assert [fleet.wait(n, 60) for n in ("a", "b")] == [0, 0], fleet.describe()
    finally:
        fleet.stop_all()
    at, until, limit, worker = paused
    created = sorted(r.created_at for r in emu.runs.values())
    quiet = [t for t in created if at + 0.3 < t < until - 0.1]
    assert not quiet, f"creates during the pause {at:.2f}..{until:.2f}: {quiet}"
    assert any(t >= until - 0.1 for t in created), "nothing was created after the pause"
    jobs, events = read(pg_url)
    senders = {
        e["detail"].get("worker") for e in events if e["to_state"] == "submitting" and e["at"] < at
    }
    assert senders == {"a", "b"}, "both workers were creating before the 429"
    assert limit == 4, "the cluster-wide limit was halved (8 -> 4)"
    assert worker in ("a", "b")
    after = [e["detail"] for e in events if e["detail"].get("action") == "claim" and e["at"] > at]
    assert after and min(d["limit"] for d in after) < 8  # claims saw the halved limit
    assert all(d["in_flight"] <= 8 for d in claim_details(events))
    check_charged_once(emu, jobs)
    check_exclusive(events)


def _force_a_create_429(emu, ledger: str) -> tuple[float, float, int, str]:
    """Force 429s until one lands on a create (polls may take them too); its pause."""
    end = time.monotonic() + 20
    while time.monotonic() < end:
        emu.inject(FaultKind.RATE_LIMIT, times=1)
        time.sleep(0.15)
        with Ledger.open(ledger) as led:
            found = [e for e in led.events() if e["detail"].get("action") == "rate_limited"]
        if found:
            emu.dice.clear()
            d = found[0]["detail"]
            return found[0]["at"], d["paused_until"], d["limit"], d["worker"]
    raise AssertionError("no create met the forced 429")


def test_worker_and_submit_refuse_a_sqlite_ledger(serve, tmp_path: Path):
    """On a SQLite ledger, worker and submit explain that one machine needs only `run`."""
    server = serve()
    manifest = write_batch(tmp_path / "b", 2)
    for args in (
        ("worker", "--ledger", str(tmp_path / "x.db")),
        ("submit", str(manifest), "--ledger", str(tmp_path / "x.db")),
    ):
        done = run(server, *args)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "PostgreSQL" in done.stderr and "flora-batch run" in done.stderr
    assert not (tmp_path / "x.db").exists()


@pg
def test_run_waits_for_workers_and_workers_for_run(serve, pg_url: str, tmp_path: Path):
    """A `run` on a ledger that live workers use exits 5 at once (and a worker beside a run)."""
    server = serve(speed=5.0)
    manifest = write_batch(tmp_path / "b", 4)
    submit(server, manifest, pg_url)
    fleet = Fleet(server, pg_url, tmp_path / "logs")
    try:
        fleet.start("busy")
        wait_for(lambda: holding(pg_url, "busy") > 0, 30, "a claim")
        done = run(server, "run", str(manifest), "--ledger", pg_url, "--rate", "0")
        assert done.returncode == 5, done.stdout + done.stderr
        assert fleet.terminate("busy") == 0
    finally:
        fleet.stop_all()
    assert server.emulator.charges_by_key() and all(
        n == 1 for n in server.emulator.charges_by_key().values()
    )


@pg
def test_results_land_in_an_object_store(serve, pg_url: str, tmp_path: Path, monkeypatch):
    """--results s3://bucket/prefix: two workers PUT every output there (nothing local);
    the ledger's path, size and sha256 match the objects and what the emulator served."""
    moto_server = pytest.importorskip("moto.server")
    fsspec = pytest.importorskip("fsspec")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    s3 = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    s3.start()
    try:
        host, port = s3.get_host_and_port()
        aws = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for name, value in aws.items():
            monkeypatch.setenv(name, value)
        env = {**aws, "FLORA_BATCH_S3_ENDPOINT": f"http://{host}:{port}"}
        bucket = fsspec.filesystem(
            "s3",
            client_kwargs={"endpoint_url": env["FLORA_BATCH_S3_ENDPOINT"]},
            skip_instance_cache=True,
        )
        bucket.mkdir("flora-results")
        server = serve()
        manifest = write_batch(tmp_path / "b", 10)
        done = run(
            server,
            "submit",
            str(manifest),
            "--ledger",
            pg_url,
            "--rate",
            "0",
            "--results",
            "s3://flora-results/spring",
            **env,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        fleet = Fleet(server, pg_url, tmp_path / "logs", **env)
        try:
            for name in ("a", "b"):
                fleet.start(name, "--exit-when-idle", "--concurrency", "3")
            assert [fleet.wait(n, 60) for n in ("a", "b")] == [0, 0], fleet.describe()
        finally:
            fleet.stop_all()
        jobs, events = read(pg_url)
        assert all(j.state is JobState.DONE for j in jobs)
        check_charged_once(server.emulator, jobs)
        assert check_outputs(server.emulator, jobs, bucket.cat_file) == 10
        paths = {o.path for j in jobs for o in j.outputs}
        assert all(p and p.startswith("s3://flora-results/spring/SKU-") for p in paths), paths
        assert len(bucket.find("flora-results/spring")) == 10
        assert all(o.size == bucket.info(o.path)["size"] for j in jobs for o in j.outputs)
        assert not (tmp_path / "b" / "results").exists()
        check_exclusive(events)
    finally:
        s3.stop()


@pg
def test_status_and_report_show_which_worker_holds_what(serve, pg_url: str, tmp_path: Path):
    """status (text and JSON) lists each worker's jobs and lease; report adds a worker column."""
    server = serve()
    manifest = write_batch(tmp_path / "b", 3)
    submit(server, manifest, pg_url)
    with Ledger.open(pg_url) as ledger:
        Leases(ledger).claim("mugs", "w-7", 2, now=time.time(), lease=120.0)
    text = run(server, "status", "--ledger", pg_url, "--batch", "mugs")
    assert text.returncode == 0, text.stderr
    assert "worker   w-7: 2 planned (lease " in text.stdout, text.stdout
    as_json = run(server, "status", "--ledger", pg_url, "--batch", "mugs", "--json")
    (holder,) = json.loads(as_json.stdout)["workers"]
    assert holder["worker_id"] == "w-7" and holder["states"] == {"planned": 2}
    assert 100 < holder["lease_seconds_left"] <= 120
    out = tmp_path / "report"
    done = run(
        server,
        "report",
        "--ledger",
        pg_url,
        "--batch",
        "mugs",
        "--results",
        str(tmp_path / "b" / "results"),
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    with open(out / "results.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert sorted(r["worker"] for r in table) == ["", "w-7", "w-7"]


@pg
def test_sigterm_waits_out_a_create_in_the_air_before_handing_its_job_back(
    serve, pg_url: str, tmp_path: Path
):
    """FLORA does not merge same-key creates that overlap, and a create takes 1.5 s: a
    worker stopped while its create is in the air waits for the answer and records the run
    before it hands the job back, so the worker that takes it over polls that run instead of
    sending the key again while the first create is still running: charged once."""
    server = serve(speed=15.0, create_latency=1.5, merge_concurrent_creates=False)
    emu = server.emulator
    manifest = write_batch(tmp_path / "b", 1)
    submit(server, manifest, pg_url)
    fleet = Fleet(server, pg_url, tmp_path / "logs")
    try:
        fleet.start("leaving", "--lease", "60")
        wait_for(lambda: emu.request_counts[CREATE] >= 1, 30, "the create in the air")
        assert fleet.terminate("leaving") == 0, fleet.describe()
        fleet.start("staying", "--lease", "60", "--exit-when-idle")  # takes it at once
        assert fleet.wait("staying", 60) == 0, fleet.describe()
    finally:
        fleet.stop_all()
    jobs, events = read(pg_url)
    check_charged_once(emu, jobs)
    assert [j.state for j in jobs] == [JobState.DONE]
    assert len([r for r in emu.runs.values() if not r.foreign]) == 1
    check_exclusive(events)


@pg
def test_a_worker_whose_lease_was_taken_sends_no_more_creates(
    serve, pg_url: str, tmp_path: Path
):
    """Creates answered 503, each after half a second: while the worker retries, its lease
    is taken by another worker.  It checks its lease in the ledger before every create, so
    no create of it leaves after that (the other worker now decides what is sent)."""
    server = serve(speed=15.0, faults=FaultPlan(slow=1.0, slow_seconds=0.5))
    emu = server.emulator
    emu.inject("unavailable_before_create", times=50)
    manifest = write_batch(tmp_path / "b", 1)
    submit(server, manifest, pg_url)
    fleet = Fleet(server, pg_url, tmp_path / "logs")
    try:
        fleet.start("slow", "--lease", "60")
        wait_for(lambda: emu.request_counts[CREATE] >= 1, 30, "a first create")
        with Ledger.open(pg_url) as ledger, ledger._write() as conn:
            taken = {"worker_id": "thief", "lease_until": time.time() + 600}
            conn.execute(update(jobs_table).values(**taken))
        sent = emu.request_counts[CREATE]
        time.sleep(3.0)  # six more tries' worth of 0.5-s answers
        assert emu.request_counts[CREATE] <= sent + 1, fleet.describe()  # one in the air
    finally:
        fleet.stop_all()

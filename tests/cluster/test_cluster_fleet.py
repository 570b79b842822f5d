"""Four `flora-batch worker` processes on one batch, two SIGKILLed mid-way, faults switched on.

The verdict comes from the emulator's books (one charge per key, every output byte-identical
to what it served) and from the ledger's event log (no job held by two live workers at
once, the cluster-wide in-flight cap never exceeded), plus a sampler thread counting the
ledger's in-flight jobs every few milliseconds while the fleet works.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_helpers import (
    Fleet,
    Sampler,
    check_charged_once,
    check_exclusive,
    check_outputs,
    claim_details,
    counts,
    holding,
    read,
    run,
    wait_for,
    write_batch,
)

from flora_batch.emulator import FaultPlan
from flora_batch.types import JobState

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

JOBS = 300
CAP = 8
LEASE = "2"


def faults() -> FaultPlan:
    """Every fault a create, a poll or a download can meet, none that loses a run's id."""
    return FaultPlan(
        seed=11,
        rate_limit=0.02,
        retry_after=0.2,
        error_before_create=0.04,
        error_after_create=0.04,
        drop_after_create=0.04,
        poll_error=0.04,
        truncate_media=0.04,
        expire_media=0.03,
        slow=0.03,
        slow_seconds=0.1,
        run_failure=0.02,
    )


def test_four_workers_two_killed_every_job_charged_once(serve, pg_url: str, tmp_path: Path):
    """300 jobs, 4 workers, 2 SIGKILLed: one charge per key, verified files, exclusive, capped."""
    server = serve(speed=150.0, faults=faults(), media_ttl=2.0)
    emu = server.emulator
    manifest = write_batch(tmp_path / "batch", JOBS)
    done = run(
        server,
        "submit",
        str(manifest),
        "--ledger",
        pg_url,
        "--concurrency",
        str(CAP),
        "--rate",
        "0",
    )
    assert done.returncode == 0, done.stderr
    fleet = Fleet(server, pg_url, tmp_path / "logs")
    try:
        with Sampler(pg_url, "mugs") as sampler:
            for name in ("w0", "w1", "w2", "w3"):
                fleet.start(name, "--lease", LEASE, "--concurrency", "3")

            def finished(n: int) -> bool:
                c = counts(pg_url, "mugs")
                return c[JobState.DONE] + c[JobState.FAILED] >= n

            flying = ("submitting", "running", "downloading")
            wait_for(lambda: finished(JOBS // 5), 60, "a fifth of the batch")
            wait_for(lambda: holding(pg_url, "w0", flying) > 0, 30, "w0 with jobs in flight")
            fleet.kill("w0")
            wait_for(lambda: finished(JOBS // 2), 60, "half the batch")
            wait_for(lambda: holding(pg_url, "w1", flying) > 0, 30, "w1 with jobs in flight")
            fleet.kill("w1")
            fleet.start("w0-again", "--lease", LEASE, "--concurrency", "3")
            wait_for(lambda: finished(JOBS), 80, "the whole batch")
            for name in ("w2", "w3", "w0-again"):
                assert fleet.terminate(name) == 0, fleet.describe()
    finally:
        fleet.stop_all()
    jobs, events = read(pg_url)
    why = fleet.describe()
    assert len(jobs) == JOBS
    check_charged_once(emu, jobs)
    assert check_outputs(emu, jobs, lambda p: Path(p).read_bytes()) >= JOBS * 0.9, why
    claims = check_exclusive(events)
    assert set(claims) >= {"w0", "w1", "w2", "w3"}, claims
    reclaimed = [
        e
        for e in events
        if e["detail"].get("action") == "claim" and e["detail"]["previous"] in ("w0", "w1")
    ]
    in_flight = [
        e for e in reclaimed if e["from_state"] in ("submitting", "running", "downloading")
    ]
    assert in_flight, f"no in-flight job of a killed worker was taken over: {reclaimed}"
    assert max(d["in_flight"] for d in claim_details(events)) <= CAP
    assert 0 < sampler.max <= CAP, (sampler.max, sampler.samples)
    assert sampler.samples > 100

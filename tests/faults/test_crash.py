"""SIGKILL the real CLI at seeded moments under injected faults; the re-run keeps the promise.

Each schedule: an emulator on a loopback socket with a seeded fault plan (429s with and
without retry-after, 5xx before and after create, connections dropped after create,
truncated and expired media, slow answers, a few failed runs), the CLI killed 1–3 times
(after a random delay, or once the server has seen N more creates or requests), then
re-run until the batch settles.  The verdict comes from the emulator's own books.

Most schedules run the CLI with retry waits zeroed (``retrying.set_testing``, as every
in-process test does) so that the suite fits its time budget; every eighth seed runs it
exactly as a user would, real back-off included, with lighter faults.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from fault_helpers import FAST, check_promise, crash_until_done, tree, write_batch

from flora_batch.emulator import FaultPlan
from flora_batch.types import JobState

#: 16 seeds x 2 idempotency modes = 32 schedules in CI; FLORA_BATCH_FAULT_SEEDS=500 for a soak.
SEEDS = range(int(os.environ.get("FLORA_BATCH_FAULT_SEEDS", "16")))


def fault_plan(rng: random.Random, seed: int, *, light: bool) -> FaultPlan:
    """Moderate, seeded probabilities for every fault the contract warns about."""
    scale = 0.5 if light else 1.0

    def p(low: float = 0.05, high: float = 0.15) -> float:
        return round(rng.uniform(low, high) * scale, 3)

    return FaultPlan(
        seed=seed,
        rate_limit=p(0.03, 0.08),
        retry_after=0.05,
        retry_after_missing=rng.choice((0.0, 0.0, 0.25)),
        error_before_create=p(),
        unavailable_before_create=p(0.0, 0.08),
        error_after_create=p(),
        drop_after_create=p(),
        poll_error=p(),
        truncate_media=p(),
        expire_media=p(),
        slow=p(0.0, 0.1),
        slow_seconds=0.05,
        run_failure=rng.choice((0.0, 0.0, 0.1)),
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["replay", "conflict"])
@pytest.mark.parametrize("seed", SEEDS)
def test_killed_batches_finish_with_every_job_charged_once(serve, tmp_path: Path, seed, mode):
    """Whatever is killed when, re-running finishes: one charge per key, verified files."""
    rng = random.Random(f"crash-{seed}-{mode}")
    real_waits = seed % 8 == 0
    plan = fault_plan(rng, seed, light=real_waits)
    server = serve(idempotency=mode, faults=plan, media_ttl=rng.choice((None, 0.5)))
    manifest = write_batch(tmp_path / "batch", rng.randint(6, 12))
    before = tree(manifest.parent)
    args = ["run", str(manifest), *FAST, "--concurrency", str(rng.randint(2, 6))]
    schedule = crash_until_done(server, manifest, args, seed, real_waits=real_waits)
    why = f"{plan.to_string()}\n{schedule.describe()}"
    jobs = check_promise(server, manifest, before, unresolved_ok=mode == "conflict")
    unresolved = [j for j in jobs if j.state is JobState.UNRESOLVED]
    if unresolved:
        assert schedule.last.code == 6, why
        for job in unresolved:
            assert f"UNRESOLVED {job.source}" in schedule.last.out, why
    elif any(j.state is JobState.FAILED for j in jobs):
        assert schedule.last.code == 1, why
    else:
        assert schedule.last.code == 0, why

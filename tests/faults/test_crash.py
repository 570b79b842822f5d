"""SIGKILL the real CLI at seeded moments under injected faults; the re-run keeps the promise.

Each schedule: an emulator on a loopback socket with a seeded fault plan (429s with and
without retry-after, 5xx before and after create, connections dropped after create,
truncated and expired media, slow answers, a few failed runs), the CLI killed 1–3 times
(after a random delay, or once the server has seen N more creates or requests), then
re-run until the batch settles.  The verdict comes from the emulator's own books.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fault_helpers import FAST, check_promise, crash_until_done, tree, write_batch
from flora_batch.emulator import FaultPlan

SEEDS = range(30)


def fault_plan(rng: random.Random, seed: int) -> FaultPlan:
    """Moderate, seeded probabilities for every fault the contract warns about."""

    def p() -> float:
        return round(rng.uniform(0.05, 0.15), 3)

    return FaultPlan(
        seed=seed,
        rate_limit=round(rng.uniform(0.03, 0.08), 3),
        retry_after=0.05,
        retry_after_missing=rng.choice((0.0, 0.0, 0.25)),
        error_before_create=p(),
        unavailable_before_create=round(rng.uniform(0.0, 0.08), 3),
        error_after_create=p(),
        drop_after_create=p(),
        poll_error=p(),
        truncate_media=p(),
        expire_media=p(),
        slow=round(rng.uniform(0.0, 0.1), 3),
        slow_seconds=0.05,
        run_failure=rng.choice((0.0, 0.0, 0.1)),
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["replay", "conflict"])
@pytest.mark.parametrize("seed", SEEDS)
def test_killed_batches_finish_with_every_job_charged_once(serve, tmp_path: Path, seed, mode):
    """Whatever is killed when, re-running finishes: one charge per key, verified files."""
    rng = random.Random(f"crash-{seed}-{mode}")
    plan = fault_plan(rng, seed)
    server = serve(idempotency=mode, faults=plan, media_ttl=rng.choice((None, 0.5)))
    manifest = write_batch(tmp_path / "batch", rng.randint(6, 12))
    before = tree(manifest.parent)
    args = ["run", str(manifest), *FAST, "--concurrency", str(rng.randint(2, 6))]
    schedule = crash_until_done(server, manifest, args, seed)
    why = f"{plan.to_string()}\n{schedule.describe()}"
    jobs = check_promise(server, manifest, before, unresolved_ok=mode == "conflict")
    unresolved = [j for j in jobs if j.state.value == "unresolved"]
    if unresolved:
        assert schedule.last.code == 6, why
        for job in unresolved:
            assert f"UNRESOLVED {job.source}" in schedule.last.out, why
    elif any(j.state.value == "failed" for j in jobs):
        assert schedule.last.code == 1, why
    else:
        assert schedule.last.code == 0, why

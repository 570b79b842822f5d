"""SIGKILL the real CLI at seeded moments, against FLORA's worst case; the re-run keeps the promise.

Each schedule: an emulator on a loopback socket that behaves as the contract says FLORA
*may* (CONTRACT.md; issue #16): its clock off ours, bills above quotes (sometimes no
quote, sometimes late bills), and by the seed's draw a short key window, same-key creates
that overlap and both run, a 4xx to a same-key repeat, short history pages, quirky media,
a technique with two outputs; on top, a seeded fault plan (429s with and without
retry-after, 5xx before and after create, connections dropped after create, truncated
and expired media, slow answers, a few failed runs).  The CLI is killed 1-3 times (after a
random delay, or once the server has seen N more creates or requests), then re-run until
the batch settles.  The verdict comes from the emulator's own books: every key charged
once, every paid output on disk, the ledger's money equal to the bill, and, with no other
client in the workspace, no job left unresolved (in both idempotency modes).

A few more schedules add other clients' runs of the same technique at the same moments:
only there may a job stay unresolved (its run cannot be told from theirs), and then the
summary names it.

Most schedules run the CLI with retry waits zeroed (``retrying.set_testing``, as every
in-process test does) so that the suite fits its time budget; every eighth seed runs it
exactly as a user would, real back-off included, with lighter faults.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import FAST, check_promise, crash_until_done, tree, write_batch

from flora_batch.emulator import FaultPlan
from flora_batch.types import JobState

#: 13 seeds x 2 idempotency modes = 26 schedules in CI, and 2 x 2 beside other clients: 30;
#: FLORA_BATCH_FAULT_SEEDS=100 for a 200-schedule soak (and 28 beside other clients).
SEEDS = range(int(os.environ.get("FLORA_BATCH_FAULT_SEEDS", "13")))
#: Schedules with other clients in the workspace: a seventh as many seeds (at least 2).
OTHER_SEEDS = range(1000, 1000 + max(2, len(SEEDS) // 7))


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


def worst_case(rng: random.Random, *, others: bool) -> dict[str, Any]:
    """The contract's worst case, as emulator switches: always a skewed clock and bills
    above quotes; by the draw, the rest."""
    config: dict[str, Any] = {
        "clock_skew": rng.choice((-90.0, -20.0, 15.0, 120.0)),
        "bill_factor": rng.choice((1.5, 2.0, 3.0)),
        "late_charge": rng.choice((0.0, 0.0, 0.05)),
        "quote": rng.choice(("exact", "exact", "zero", "missing")),
        "key_window": rng.choice((None, None, 8.0)),
        "history_page_cap": rng.choice((None, None, 3)),
        "duplicate_status": rng.choice((None, None, None, 400, 404)),
        "media_quirks": rng.random() < 0.3,
    }
    if rng.random() < 0.4:  # same-key creates that overlap both run
        config.update(merge_concurrent_creates=False, create_latency=rng.choice((0.05, 0.2)))
    if others:
        config.update(other_clients=0.5, other_clients_burst=rng.randint(1, 3))
    return config


def schedule_batch(
    rng: random.Random, tmp_path: Path, switches: dict[str, Any]
) -> tuple[Path, list[str]]:
    """The batch and the CLI's arguments: studio-shot, or a technique with two outputs."""
    technique = rng.choice(("studio-shot", "studio-shot", "book-drop", "fit-checks"))
    manifest = write_batch(tmp_path / "batch", rng.randint(6, 12), technique=technique)
    args = ["run", str(manifest), *FAST, "--concurrency", str(rng.randint(2, 6))]
    if switches["key_window"] is not None:  # the client is told FLORA's window
        args += ["--key-window", str(switches["key_window"])]
    return manifest, args


def crash_schedule(serve: Any, tmp_path: Path, seed: int, mode: str, *, others: bool) -> None:
    """One schedule, judged: the promise, and the exit code the summary owes the user."""
    rng = random.Random(f"crash-{seed}-{mode}")
    real_waits = seed % 8 == 0
    plan = fault_plan(rng, seed, light=real_waits)
    switches = worst_case(rng, others=others)
    server = serve(idempotency=mode, faults=plan, media_ttl=rng.choice((None, 0.5)), **switches)
    manifest, args = schedule_batch(rng, tmp_path, switches)
    before = tree(manifest.parent)
    schedule = crash_until_done(server, manifest, args, seed, real_waits=real_waits)
    why = f"{plan.to_string()}\n{switches}\n{schedule.describe()}"
    jobs = check_promise(server, manifest, before, unresolved_ok=others)
    unresolved = [j for j in jobs if j.state is JobState.UNRESOLVED]
    if unresolved:
        assert schedule.last.code == 6, why
        for job in unresolved:
            assert f"UNRESOLVED {job.source}" in schedule.last.out, why
            assert f"row {job.row_index + 1}" in (job.error_message or ""), why
    elif any(j.state is JobState.FAILED for j in jobs):
        assert schedule.last.code == 1, why
    else:
        assert schedule.last.code == 0, why


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["replay", "conflict"])
@pytest.mark.parametrize("seed", SEEDS)
def test_killed_batches_finish_with_every_job_charged_once(serve, tmp_path: Path, seed, mode):
    """Whatever is killed when, against the worst case: one charge per key, verified files,
    and no paid run left unidentified."""
    crash_schedule(serve, tmp_path, seed, mode, others=False)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["replay", "conflict"])
@pytest.mark.parametrize("seed", OTHER_SEEDS)
def test_killed_batches_beside_other_clients_never_pay_twice(serve, tmp_path: Path, seed, mode):
    """Other clients' runs at the same moments: still one charge per key and every file of
    a done job on disk; a job whose run cannot be told from theirs is unresolved, named."""
    crash_schedule(serve, tmp_path, seed, mode, others=True)

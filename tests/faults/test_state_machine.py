"""Property: no interleaving of crashes and faulty answers gives one key two charged runs.

Hypothesis draws a fault plan, an idempotency mode, a batch and one to three crash points
(the N-th create, or N-th request of any kind, from the start of a run, lost before or
after the server handled it), and the contract's worst case: a server clock off ours,
bills above quotes (or late), a 4xx to a same-key repeat, a short key window.
The real ``run_batch`` runs against the emulator in-process with a SQLite ledger file;
each crash cancels the whole batch mid-request, and a fresh ``run_batch`` on the same
ledger takes over.  After the last run settles, the emulator's books must show every
key charged once, the ledger's money must match the server's, and no job may be left
unresolved (no other client works in this workspace).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from fault_helpers import (
    check_charges,
    check_files,
    check_money,
    read_jobs,
    settled,
    write_batch,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inproc import CrashingTransport, TravelClock, fast_settings, run_crashing, run_once

from flora_batch import retrying
from flora_batch.emulator import Emulator, EmulatorConfig, FaultPlan
from flora_batch.types import JobState

PROBABILITY = st.sampled_from((0.0, 0.05, 0.1, 0.15))
#: (which requests to count, the n-th of them, lost before or after the server handled it)
CRASH = st.tuples(
    st.sampled_from(("create", "any")), st.integers(1, 12), st.sampled_from(("before", "after"))
)


@st.composite
def fault_plans(draw: st.DrawFn) -> FaultPlan:
    """A seeded plan of moderate faults on every endpoint."""
    return FaultPlan(
        seed=draw(st.integers(0, 2**16)),
        rate_limit=draw(PROBABILITY),
        retry_after=0.01,
        error_before_create=draw(PROBABILITY),
        unavailable_before_create=draw(PROBABILITY),
        error_after_create=draw(PROBABILITY),
        drop_after_create=draw(PROBABILITY),
        poll_error=draw(PROBABILITY),
        truncate_media=draw(PROBABILITY),
        expire_media=draw(PROBABILITY),
        run_failure=draw(st.sampled_from((0.0, 0.1))),
    )


@st.composite
def worst_cases(draw: st.DrawFn) -> dict[str, object]:
    """What the contract lets FLORA do besides faults (``EmulatorConfig`` switches)."""
    return {
        "clock_skew": draw(st.sampled_from((0.0, -40.0, 25.0))),
        "bill_factor": draw(st.sampled_from((1.0, 2.5))),
        "late_charge": draw(st.sampled_from((0.0, 0.05))),
        "duplicate_status": draw(st.sampled_from((None, None, 400, 404))),
        "key_window": draw(st.sampled_from((None, 30.0))),
    }


async def crash_then_settle(
    emu: Emulator, manifest: Path, concurrency: int, crashes: list[tuple[str, int, str]]
) -> None:
    """Run with each crash armed in turn, then run until no job is left in flight."""
    transport = CrashingTransport(emu)
    window = emu.config.key_window or 7200.0
    clock = emu.config.clock
    assert isinstance(clock, TravelClock)
    config = fast_settings(emu, concurrency=concurrency, timeout=0.5, key_window=window)
    for crash in crashes:
        await run_crashing(manifest, config, transport, crash, clock=clock)
        clock.travel(2.0)  # the next process starts once a lost create is surely over
    for _ in range(5):
        await run_once(manifest, config, transport, clock=clock)
        if all(settled(j) for j in read_jobs(manifest)):
            return
    raise AssertionError(f"jobs still in flight: {[j.state for j in read_jobs(manifest)]}")


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    plan=fault_plans(),
    mode=st.sampled_from(("replay", "conflict")),
    worst=worst_cases(),
    n_rows=st.integers(2, 6),
    concurrency=st.integers(1, 4),
    crashes=st.lists(CRASH, min_size=1, max_size=3),
)
def test_no_interleaving_of_crashes_and_faults_charges_a_key_twice(
    plan, mode, worst, n_rows, concurrency, crashes
):
    """Crashes at any request, before or after the server acts, never double-charge a key,
    and every paid run ends matched to its job."""
    clock = TravelClock()
    emu = Emulator(EmulatorConfig(speed=1000, idempotency=mode, faults=plan, clock=clock, **worst))
    with tempfile.TemporaryDirectory() as tmp, retrying.set_testing():
        manifest = write_batch(Path(tmp) / "batch", n_rows)
        asyncio.run(crash_then_settle(emu, manifest, concurrency, crashes))
        jobs = read_jobs(manifest)
        check_charges(emu, jobs, unresolved_ok=False)
        check_files(emu, jobs, manifest.parent / "results")
        check_money(emu, manifest, jobs)
        assert not [j for j in jobs if j.state is JobState.UNRESOLVED]

"""One test per rule of the crash-safety promise that random schedules may not hit for sure.

Faults are forced with ``emu.inject(kind, times=...)`` on the next matching request, and
crashes with ``CrashingTransport`` (in-process) or SIGKILL (the real CLI).  Every test
ends on the emulator's own books: charges per key, runs, served media.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fault_helpers import (
    FAST,
    check_promise,
    creates,
    kill_when,
    ledger_path,
    read_jobs,
    run_cli,
    tree,
    write_batch,
)
from inproc import (
    BASE_URL,
    CrashingTransport,
    TravelClock,
    fast_settings,
    run_crashing,
    run_once,
)

from flora_batch.emulator import LIST_RUNS, MEDIA, POLL, Emulator, EmulatorConfig, FaultPlan
from flora_batch.ledger import Ledger
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import prepare
from flora_batch.remote.client import FloraClient
from flora_batch.types import JobState
from flora_batch.worker import Worker

pytestmark = pytest.mark.usefixtures("retry_fast")


def emulator(**kw: object) -> Emulator:
    """An in-process emulator, fast by default."""
    kw.setdefault("speed", 1000.0)
    return Emulator(EmulatorConfig(**kw))  # type: ignore[arg-type]


def states(manifest: Path) -> list[JobState]:
    """Each job's state, in row order."""
    return [j.state for j in read_jobs(manifest)]


def events_of(manifest: Path, key: str) -> list[str | None]:
    """The states a job passed through, oldest first."""
    with Ledger.open(ledger_path(manifest)) as ledger:
        return [e["to_state"] for e in ledger.events(key)]  # type: ignore[arg-type]


# -- lost answers to creates ----------------------------------------------------------------


async def test_dropped_create_is_replayed_with_its_key_and_adopted(tmp_path: Path):
    """replay mode: the run created before the drop is adopted by resending its key, paid once."""
    emu = emulator(idempotency="replay")
    manifest = write_batch(tmp_path / "b", 1)
    emu.inject("drop_after_create")
    await run_once(manifest, fast_settings(emu), CrashingTransport(emu))
    [job] = read_jobs(manifest)
    assert job.state is JobState.DONE
    assert creates(emu) == 2 and len(emu.runs) == 1
    assert emu.charges_by_key() == {job.idempotency_key: 1}
    assert job.run_id == next(iter(emu.runs))


async def test_dropped_create_in_409_mode_is_reconciled_from_the_run_history(tmp_path: Path):
    """409 mode: the duplicate sends the job to needs_reconcile; the one candidate is adopted."""
    emu = emulator(idempotency="conflict")
    manifest = write_batch(tmp_path / "b", 1)
    emu.inject("drop_after_create")
    await run_once(manifest, fast_settings(emu), CrashingTransport(emu))
    [job] = read_jobs(manifest)
    assert job.state is JobState.DONE
    assert JobState.NEEDS_RECONCILE in events_of(manifest, job.key)
    assert emu.request_counts[LIST_RUNS] >= 1
    assert emu.charges_by_key() == {job.idempotency_key: 1}
    assert job.run_id == next(iter(emu.runs))


async def test_crash_between_create_and_record_in_409_mode_adopts_the_run_later(
    tmp_path: Path,
):
    """409 mode: killed after the server made the run, re-run minutes later: adopted, paid once."""
    clock = TravelClock()
    emu = emulator(idempotency="conflict", clock=clock)
    manifest = write_batch(tmp_path / "b", 1)
    transport = CrashingTransport(emu)
    config = fast_settings(emu)
    died = await run_crashing(manifest, config, transport, ("create", 1, "after"), clock=clock)
    assert died is None
    clock.travel(300)
    await run_once(manifest, config, transport, clock=clock)
    [job] = read_jobs(manifest)
    assert job.state is JobState.DONE, job.error_message
    assert emu.charges_by_key() == {job.idempotency_key: 1}
    assert job.run_id == next(iter(emu.runs))


async def test_no_create_leaves_while_another_of_its_technique_is_unidentified(
    tmp_path: Path,
):
    """409 mode: a job killed with its create in the air holds its technique until its run
    is identified: the other job's create leaves only after that, so the history can never
    offer a reconciliation two runs of one window (each is adopted by its own job)."""
    clock = TravelClock()
    emu = emulator(idempotency="conflict", clock=clock)
    manifest = write_batch(tmp_path / "b", 2)
    transport = CrashingTransport(emu)
    config = fast_settings(emu, concurrency=1)
    await run_crashing(manifest, config, transport, ("create", 1, "after"), clock=clock)
    clock.travel(300)
    transport.seen.clear()
    await run_once(manifest, fast_settings(emu, concurrency=2), transport, clock=clock)
    jobs = read_jobs(manifest)
    assert [j.state for j in jobs] == [JobState.DONE, JobState.DONE]
    for job in jobs:
        assert emu.runs[job.run_id or ""].idempotency_key == job.idempotency_key, job.source
    assert all(n == 1 for n in emu.charges_by_key().values())
    asked = [r for r in transport.seen if r.startswith("POST") or r.endswith("/technique-runs")]
    assert asked[0].startswith("POST") and asked[1].endswith("/technique-runs")  # 409, history
    assert asked[2].startswith("POST")  # only then the other job's create


def test_two_lost_creates_are_each_matched_to_their_own_job(serve, tmp_path: Path):
    """409 mode, two creates whose answers are lost: creates of a technique go one at a
    time, so each lost one is matched to its own job: all done, exit 0, none bought twice."""
    server = serve(idempotency="conflict", speed=1000.0)
    manifest = write_batch(tmp_path / "b", 2)
    before = tree(manifest.parent)
    server.emulator.inject("drop_after_create", times=2)
    args = ["run", str(manifest), *FAST, "--concurrency", "2"]
    first = run_cli(server, args, tmp_path / "1.log")
    assert first.code == 0, first.out
    jobs = check_promise(server, manifest, before)
    assert [j.state for j in jobs] == [JobState.DONE, JobState.DONE]


def test_runs_of_other_clients_leave_a_job_unresolved_and_never_bought_again(
    serve, tmp_path: Path
):
    """409 mode, and someone else makes runs of the technique at the same moments: a lost
    create cannot be told from theirs.  Unresolved, exit 6, named by row and id, and never
    offered a re-buy (FLORA holds its key); re-runs buy nothing; --resubmit-unresolved is
    the user's own decision, under a new key."""
    server = serve(
        idempotency="conflict", speed=1000.0, other_clients=1.0, other_clients_spread=0.0
    )
    manifest = write_batch(tmp_path / "b", 1)
    before = tree(manifest.parent)
    server.emulator.inject("drop_after_create")
    args = ["run", str(manifest), *FAST, "--history-lag", "0"]
    first = run_cli(server, args, tmp_path / "1.log")
    [job] = read_jobs(manifest)
    assert job.state is JobState.UNRESOLVED, first.out
    assert first.code == 6, first.out
    assert f"UNRESOLVED {job.source}" in first.out and "row 1 (id SKU-001)" in first.out
    assert "buying it again would pay twice" in first.out
    sent = creates(server.emulator)
    again = run_cli(server, args, tmp_path / "2.log")
    assert again.code == 6 and creates(server.emulator) == sent
    check_promise(server, manifest, before, unresolved_ok=True)
    resubmit = run_cli(server, [*args, "--resubmit-unresolved"], tmp_path / "3.log")
    assert resubmit.code == 0, resubmit.out
    charged = server.emulator.charges_by_key()
    assert charged[f"{job.key}-r2"] == 1 and all(n == 1 for n in charged.values())


async def test_rate_limited_technique_read_is_retried(tmp_path: Path):
    """A 429 on the free technique read at start-up is retried, not the end of the run."""
    emu = emulator()
    manifest = write_batch(tmp_path / "b", 1)
    emu.inject("rate_limit")
    await run_once(manifest, fast_settings(emu), CrashingTransport(emu))
    assert states(manifest) == [JobState.DONE]


# -- the idempotency key window ---------------------------------------------------------------


async def test_key_older_than_the_window_is_reconciled_not_resent(tmp_path: Path):
    """A job whose key the server forgot is matched from the history; no blind second create."""
    clock = TravelClock()
    emu = emulator(idempotency="replay", key_window=60, clock=clock)
    manifest = write_batch(tmp_path / "b", 1)
    transport = CrashingTransport(emu)
    config = fast_settings(emu, key_window=60)
    await run_crashing(manifest, config, transport, ("create", 1, "after"), clock=clock)
    sent = creates(emu)
    clock.travel(120)
    await run_once(manifest, config, transport, clock=clock)
    [job] = read_jobs(manifest)
    assert creates(emu) == sent
    assert job.state is JobState.DONE
    assert JobState.NEEDS_RECONCILE in events_of(manifest, job.key)
    assert emu.charges_by_key() == {job.idempotency_key: 1}


async def test_expired_keys_never_adopt_another_jobs_run(tmp_path: Path):
    """Two jobs past the key window, one run between them: nobody adopts a run not surely theirs."""
    clock = TravelClock()
    emu = emulator(idempotency="replay", key_window=60, clock=clock)
    manifest = write_batch(tmp_path / "b", 2)
    m = load_manifest(manifest)
    config = fast_settings(emu, key_window=60, concurrency=1)
    transport = CrashingTransport(emu)
    async with FloraClient(BASE_URL, emu.config.api_key, transport=transport) as client:
        with Ledger.open(ledger_path(manifest)) as ledger:
            prepared = await prepare(m, client, ledger, config)
            quotes = {"studio-shot": 0.06}
            ledger.record_planned(prepared.new_jobs(), quoted_cost=quotes, now=clock())
            first, second = prepared.keys
            ledger.mark_submitting(first, now=clock())  # its create never reached FLORA
            rec = ledger.mark_submitting(second, now=clock())
        await client.create_run(rec.technique, rec.inputs, rec.idempotency_key)
    clock.travel(120)
    await run_once(manifest, config, transport, clock=clock)
    for job in read_jobs(manifest):
        if job.run_id is not None:
            assert emu.runs[job.run_id].idempotency_key == job.idempotency_key, job.source
        else:
            assert job.state is JobState.UNRESOLVED
    assert len(emu.runs) == 1


# -- run-level failures ---------------------------------------------------------------------


def test_retry_failed_rebuys_only_retryable_failures_under_a_new_key(serve, tmp_path: Path):
    """Failures keep code, message, category; --retry-failed re-buys provider_error as <key>-r2."""
    server = serve(speed=1000.0)
    emu = server.emulator
    manifest = write_batch(tmp_path / "b", 3)
    emu.inject("run_failure", code="provider_error")
    emu.inject("run_failure", code="safety_blocked")
    args = ["run", str(manifest), *FAST, "--concurrency", "1"]
    first = run_cli(server, args, tmp_path / "1.log")
    assert first.code == 1, first.out
    retryable, blocked, fine = read_jobs(manifest)
    assert (retryable.error_code, retryable.error_category) == ("provider_error", "retryable")
    assert retryable.error_message
    assert (blocked.error_code, blocked.error_category) == ("safety_blocked", "input")
    assert fine.state is JobState.DONE
    retry = run_cli(server, [*args, "--retry-failed"], tmp_path / "2.log")
    assert retry.code == 1, retry.out  # the safety block stays failed
    charged = emu.charges_by_key()
    assert charged[retryable.key] == 1 and charged[f"{retryable.key}-r2"] == 1
    assert charged[blocked.key] == 1 and f"{blocked.key}-r2" not in charged
    assert len(charged) == 4
    again, still, _ = read_jobs(manifest)
    assert again.state is JobState.DONE and again.idempotency_key == f"{retryable.key}-r2"
    assert still.state is JobState.FAILED
    spent, _ = Ledger.open(ledger_path(manifest)).money()
    assert abs(spent - emu.total_charged()) < 1e-9


# -- money ------------------------------------------------------------------------------------


async def test_budget_reserves_before_create_and_lets_in_flight_runs_finish(tmp_path: Path):
    """max_cost admits only what its reserve covers; admitted runs finish and download."""
    emu = emulator()
    manifest = write_batch(tmp_path / "b", 6)
    result = await run_once(
        manifest, fast_settings(emu, max_cost=0.20, concurrency=6), CrashingTransport(emu)
    )
    assert result.outcome.stopped == "budget"
    assert states(manifest).count(JobState.DONE) == 3
    assert states(manifest).count(JobState.PLANNED) == 3
    assert emu.total_charged() <= 0.20 + 1e-9
    assert len(emu.charges_by_key()) == 3


async def test_late_charges_are_read_again_until_the_ledger_matches_the_bill(tmp_path: Path):
    """charged_cost that shows up after the run ended still reaches the ledger (on a re-run)."""
    emu = emulator(late_charge=0.5)
    manifest = write_batch(tmp_path / "b", 3)
    transport = CrashingTransport(emu)
    await run_once(manifest, fast_settings(emu), transport)
    assert states(manifest) == [JobState.DONE] * 3
    await asyncio.sleep(0.6)
    await run_once(manifest, fast_settings(emu), transport)
    spent, reserved = Ledger.open(ledger_path(manifest)).money()
    assert reserved == 0.0
    assert abs(spent - emu.total_charged()) < 1e-9


def test_budget_stop_exits_4_and_a_raised_cap_finishes(serve, tmp_path: Path):
    """The CLI exits 4 at the cap; the same command with a higher cap finishes, paying once."""
    server = serve(speed=1000.0)
    manifest = write_batch(tmp_path / "b", 5)
    args = ["run", str(manifest), *FAST]
    capped = run_cli(server, [*args, "--max-cost", "0.13"], tmp_path / "1.log")
    assert capped.code == 4, capped.out
    done = run_cli(server, args, tmp_path / "2.log")
    assert done.code == 0, done.out
    assert sorted(server.emulator.charges_by_key().values()) == [1] * 5


def test_out_of_credits_mid_batch_exits_3_and_resumes_after_top_up(serve, tmp_path: Path):
    """A 402 stops new creates (exit 3), runs in flight finish; after a top-up it all finishes."""
    server = serve(speed=1000.0, balance=0.13)
    manifest = write_batch(tmp_path / "b", 5)
    before = tree(manifest.parent)
    args = ["run", str(manifest), *FAST, "--concurrency", "2"]
    stopped = run_cli(server, args, tmp_path / "1.log")
    assert stopped.code == 3, stopped.out
    assert states(manifest).count(JobState.DONE) == 2
    server.emulator.balance = 10.0
    finished = run_cli(server, args, tmp_path / "2.log")
    assert finished.code == 0, finished.out
    check_promise(server, manifest, before)
    assert len(server.emulator.charges_by_key()) == 5


# -- rate limits and time limits --------------------------------------------------------------


async def test_burst_of_429s_shrinks_the_pool_and_the_batch_still_finishes(tmp_path: Path):
    """After 429s the in-flight limit drops below its maximum; every job ends done, paid once."""
    emu = emulator(faults=FaultPlan(retry_after=0.01))
    manifest = write_batch(tmp_path / "b", 8)
    limits: list[int] = []

    def watch(worker: Worker) -> None:
        original = worker.pacer.rate_limited

        def rate_limited(retry_after: float | None) -> float:
            pause = original(retry_after)
            limits.append(worker.pacer.limit)
            return pause

        worker.pacer.rate_limited = rate_limited  # type: ignore[method-assign]
        emu.inject("rate_limit", times=6)  # after the technique read: these hit the creates

    transport = CrashingTransport(emu)
    await run_once(manifest, fast_settings(emu, concurrency=4), transport, on_worker=watch)
    assert limits and min(limits) < 4
    assert states(manifest) == [JobState.DONE] * 8
    assert sorted(emu.charges_by_key().values()) == [1] * 8


def test_max_runtime_stops_with_130_and_the_next_run_finishes(serve, tmp_path: Path):
    """--max-runtime ends the run cleanly (exit 130) with runs in flight; the re-run finishes."""
    server = serve(speed=20.0)  # studio-shot takes ~1.5 s: runs are in flight at the stop
    manifest = write_batch(tmp_path / "b", 4)
    before = tree(manifest.parent)
    args = ["run", str(manifest), "--min-poll", "0.1", "--rate", "0", "--timeout", "1.5"]
    stopped = run_cli(server, [*args, "--max-runtime", "0.5"], tmp_path / "1.log")
    assert stopped.code == 130, stopped.out
    assert JobState.RUNNING in states(manifest)
    finished = run_cli(server, args, tmp_path / "2.log")
    assert finished.code == 0, finished.out
    check_promise(server, manifest, before)


# -- downloads --------------------------------------------------------------------------------


async def test_truncated_download_is_retried_and_never_kept(tmp_path: Path):
    """Bodies cut short are retried; a job whose every try is cut short has no final file."""
    emu = emulator()
    manifest = write_batch(tmp_path / "b", 1)
    results = manifest.parent / "results"
    transport = CrashingTransport(emu)
    emu.inject("truncate_media", times=1000)
    await run_once(manifest, fast_settings(emu), transport)
    assert states(manifest) == [JobState.DOWNLOADING]
    assert not [p for p in results.rglob("*") if p.is_file()]
    emu.dice.clear()
    emu.inject("truncate_media", times=2)
    await run_once(manifest, fast_settings(emu), transport)
    [job] = read_jobs(manifest)
    assert job.state is JobState.DONE
    assert job.outputs[0].sha256 == emu.served_media[(job.run_id, "output_1")]
    assert not list((results / ".flora-tmp").iterdir())
    assert creates(emu) == 1


async def test_expired_output_url_is_refreshed_by_polling_again(tmp_path: Path):
    """Killed before the download, back after the URL expired: a fresh URL, no new run.

    The run's one output was not recorded yet (it would have been with its file, by
    ``finish_run``): the job is still running, so the resume polls the run again."""
    clock = TravelClock()
    emu = emulator(media_ttl=30, clock=clock)
    manifest = write_batch(tmp_path / "b", 1)
    transport = CrashingTransport(emu)
    config = fast_settings(emu)
    await run_crashing(manifest, config, transport, ("media", 1, "before"), clock=clock)
    assert transport.seen[-1].startswith("GET /_media/"), transport.seen
    assert states(manifest) == [JobState.RUNNING]
    polls = emu.request_counts[POLL]
    clock.travel(60)
    await run_once(manifest, config, transport, clock=clock)
    [job] = read_jobs(manifest)
    assert job.state is JobState.DONE
    assert emu.request_counts[POLL] > polls
    assert creates(emu) == 1


async def test_deleted_output_is_downloaded_again_without_a_new_run(tmp_path: Path):
    """A finished job whose file was deleted is fetched again from its run, not bought again."""
    emu = emulator()
    manifest = write_batch(tmp_path / "b", 2)
    transport = CrashingTransport(emu)
    await run_once(manifest, fast_settings(emu), transport)
    gone = Path(read_jobs(manifest)[0].outputs[0].path or "")
    gone.unlink()
    media = emu.request_counts[MEDIA]
    await run_once(manifest, fast_settings(emu), transport)
    assert gone.is_file()
    assert emu.request_counts[MEDIA] == media + 1
    assert creates(emu) == 2
    assert states(manifest) == [JobState.DONE] * 2


def test_corrupted_file_of_the_same_size_is_caught_by_verify(serve, tmp_path: Path):
    """--verify re-hashes finished files: same size, different bytes is fetched again."""
    server = serve(speed=1000.0)
    manifest = write_batch(tmp_path / "b", 2)
    before = tree(manifest.parent)
    args = ["run", str(manifest), *FAST]
    assert run_cli(server, args, tmp_path / "1.log").code == 0
    path = Path(read_jobs(manifest)[0].outputs[0].path or "")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    media = server.emulator.request_counts[MEDIA]
    verified = run_cli(server, [*args, "--verify"], tmp_path / "2.log")
    assert verified.code == 0, verified.out
    assert server.emulator.request_counts[MEDIA] == media + 1
    check_promise(server, manifest, before)


# -- the runner lock --------------------------------------------------------------------------


def test_lock_of_a_sigkilled_run_does_not_block_the_next(serve, tmp_path: Path):
    """kill -9 while holding the ledger: the next run starts at once and finishes."""
    server = serve(speed=20.0)
    manifest = write_batch(tmp_path / "b", 3)
    args = ["run", str(manifest), "--min-poll", "0.1", "--rate", "0", "--timeout", "1.5"]
    killed = kill_when(server, args, tmp_path / "1.log", lambda: creates(server.emulator) >= 1)
    assert killed.killed
    assert Path(f"{ledger_path(manifest)}.lock").exists()
    finished = run_cli(server, args, tmp_path / "2.log")
    assert finished.code == 0, finished.out  # not 5: the dead holder's lock went with it
    assert sorted(server.emulator.charges_by_key().values()) == [1] * 3

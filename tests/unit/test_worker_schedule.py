"""The worker's scheduler with the real emulator in-process: resume, poll cap, one charge each.

The emulator and the worker share one clock (real time plus an offset the test moves), so
runs created by a first batch can be finished by the time a second batch resumes them.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from worker_support import (
    BreakMedia,
    Clock,
    SlowPolls,
    batch,
    created_then_stopped,
    settings,
    states,
)

from flora_batch import retrying
from flora_batch.emulator import Emulator, EmulatorConfig
from flora_batch.ledger import Ledger
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import plan_batch, run_batch
from flora_batch.types import JobState
from flora_batch.worker import loop as worker


async def test_resumed_runs_are_polled_a_few_at_a_time_and_paid_once(tmp_path: Path) -> None:
    """100 runs in flight at a resume: never more than _POLLS_AT_ONCE polls in the air,
    every job done, every key charged once (the first batch stops before any run ends)."""
    n = 100
    clock = Clock()
    emu = Emulator(EmulatorConfig(speed=1.0, clock=clock))
    manifest = batch(tmp_path, n)
    with retrying.set_testing():
        first = await created_then_stopped(manifest, emu, n, clock)
        assert first.outcome.stopped == "runtime"
        assert JobState.RUNNING in states(manifest)
        clock.offset += 3600  # every run has ended by the resume
        slow = SlowPolls(emu, delay=0.2)
        second = await run_batch(
            load_manifest(manifest), settings(emu, n), transport=slow, clock=clock
        )
    assert states(manifest) == [JobState.DONE] * n
    assert second.outcome.stopped is None
    assert 1 < slow.most <= worker._POLLS_AT_ONCE
    assert slow.polls >= first.outcome.counts[JobState.RUNNING]
    assert sorted(emu.charges_by_key().values()) == [1] * n


async def test_a_batch_learns_durations_and_finishes(tmp_path: Path) -> None:
    """Runs of a few tenths of a second: all done, each charged once, the worker learned
    the technique's server-side duration from the runs it saw complete."""
    n = 12
    emu = Emulator(EmulatorConfig(speed=200.0))
    manifest = batch(tmp_path, n)
    seen: list[worker.Worker] = []
    with retrying.set_testing():
        result = await run_batch(
            load_manifest(manifest),
            settings(emu, n, min_poll=0.01, max_poll=0.3),
            transport=SlowPolls(emu),
            on_worker=seen.append,
        )
    assert result.outcome.counts[JobState.DONE] == n
    assert sorted(emu.charges_by_key().values()) == [1] * n
    typical = seen[0].learned.typical("studio-shot")
    assert typical.total is not None and typical.total > 0


async def test_a_later_download_round_fetches_only_what_is_not_saved(tmp_path: Path) -> None:
    """Four outputs, the second failing for a whole round: the next round fetches it alone
    (the worker keeps its copy of the job's outputs as the ledger has them)."""
    emu = Emulator(EmulatorConfig(speed=1000.0))
    manifest = batch(tmp_path, 1, technique="turn-any-product-into-4-ad-visuals")
    transport = BreakMedia(emu, broken="/output_2", times=retrying.DEFAULT_POLICY.attempts)
    with retrying.set_testing():
        result = await run_batch(
            load_manifest(manifest), settings(emu, 1, min_poll=0.01), transport=transport
        )
    assert result.outcome.counts[JobState.DONE] == 1
    fetched = [p.rsplit("/", 1)[-1].split(".")[0] for p in transport.media]
    broken = retrying.DEFAULT_POLICY.attempts
    assert fetched == ["output_1"] + ["output_2"] * (broken + 1) + ["output_3", "output_4"]
    assert sorted(emu.charges_by_key().values()) == [1]


async def test_a_new_batch_starts_from_what_earlier_batches_took(tmp_path: Path) -> None:
    """A second batch of the same technique in the same ledger (tonight's, after last
    night's) knows the technique's duration before any of its own runs completes."""
    ledger = str(tmp_path / "shared.ledger.db")
    fast = Emulator(EmulatorConfig(speed=200.0))
    with retrying.set_testing():
        first = await run_batch(
            load_manifest(batch(tmp_path / "night-1", 3)),
            settings(fast, 3, ledger=ledger, min_poll=0.01, max_poll=0.3),
            transport=SlowPolls(fast),
        )
        assert first.outcome.counts[JobState.DONE] == 3
        slow = Emulator(EmulatorConfig(speed=0.01))  # its runs never finish in this test
        seen: list[worker.Worker] = []
        tonight = batch(tmp_path / "night-2", 2)
        tonight.write_text(tonight.read_text().replace("name: sched", "name: tonight"))
        rows = tonight.parent / "rows.csv"
        rows.write_text(rows.read_text().replace("mug-", "cup-"))
        second = load_manifest(tonight)
        await run_batch(
            second,
            settings(slow, 2, ledger=ledger, max_runtime=0.5),
            transport=SlowPolls(slow),
            on_worker=seen.append,
        )
    with Ledger.open(ledger) as led:
        took = led.durations("studio-shot")
        assert len(took) == 3
        assert {j.state for j in led.jobs(batch="tonight")} == {JobState.RUNNING}
    typical = seen[0].learned.typical("studio-shot")
    assert typical.total is not None and min(took) <= typical.total <= max(took)


class SickPolls(httpx.AsyncBaseTransport):
    """The emulator in-process; the polls of the first ``sick`` runs polled answer 503
    until a poll of another run is answered; every poll (run id, time) and every media
    request (``"media"``, time) is logged in order."""

    def __init__(self, emu: Emulator, sick: int) -> None:
        self.inner = httpx.ASGITransport(app=emu.app)
        self.sick = sick
        self.broken: set[str] = set()
        self.healed = False
        self.polls: list[tuple[str, float]] = []  # (run id, time.monotonic())
        self.log: list[str] = []  # run ids polled and "media", in order
        self.failed: list[str] = []  # run ids answered 503, in order

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Forward, or answer 503 for a broken run's poll while not healed."""
        parts = request.url.path.split("/")
        if request.url.path.startswith("/_media/"):
            self.log.append("media")
        if request.method != "GET" or len(parts) < 2 or parts[-2] != "runs":
            return await self.inner.handle_async_request(request)
        run_id = parts[-1]
        self.polls.append((run_id, time.monotonic()))
        self.log.append(run_id)
        if run_id not in self.broken and len(self.broken) < self.sick and not self.healed:
            self.broken.add(run_id)
        if run_id in self.broken and not self.healed:
            self.failed.append(run_id)
            return httpx.Response(503, json={"error": {"code": "service_unavailable"}})
        self.healed = True  # a healthy run answered: the sick ones recover too
        return await self.inner.handle_async_request(request)

    def gaps(self) -> list[float]:
        """Seconds between consecutive polls of each run."""
        seen: dict[str, float] = {}
        out: list[float] = []
        for run_id, at in self.polls:
            if run_id in seen:
                out.append(at - seen[run_id])
            seen[run_id] = at
        return out


async def test_runs_answering_5xx_do_not_hold_the_poll_slots(tmp_path: Path) -> None:
    """31 runs ended by the resume; the first 30 polled answer 503 (more of them than
    there are poll slots): the 31st is polled after one failed poll of each, not after
    every retry of every sick run, and its outputs are fetched before any sick run is
    polled again; then all end done, paid once, none polled twice within ``min_poll``."""
    n, sick, min_poll = 31, 30, 2.0
    assert sick > worker._POLLS_AT_ONCE
    clock = Clock()
    emu = Emulator(EmulatorConfig(speed=1.0, clock=clock))
    manifest = batch(tmp_path, n)
    with retrying.set_testing():
        first = await created_then_stopped(manifest, emu, n, clock)
        assert first.outcome.counts[JobState.RUNNING] == n
        clock.offset += 3600  # every run has ended by the resume
        sick_polls = SickPolls(emu, sick)
        second = await run_batch(
            load_manifest(manifest),
            settings(emu, n, min_poll=min_poll, max_poll=5.0),
            transport=sick_polls,
            clock=clock,
        )
    assert len(sick_polls.broken) == sick
    assert Counter(sick_polls.failed) == dict.fromkeys(sick_polls.broken, 1)
    first_media = sick_polls.log.index("media")
    assert all(r not in sick_polls.broken for r in sick_polls.log[sick : first_media + 1])
    assert states(manifest) == [JobState.DONE] * n
    assert second.outcome.stopped is None and second.outcome.stuck == []
    assert sorted(emu.charges_by_key().values()) == [1] * n
    assert min(sick_polls.gaps()) >= min_poll * 0.95


async def test_polls_failing_for_outage_limit_stop_the_batch_resumably(tmp_path: Path) -> None:
    """Every poll answers 503: after ``outage_limit`` seconds without an answer the batch
    stops as an outage with its runs kept; the next batch, FLORA back, finishes them."""
    n = 3
    emu = Emulator(EmulatorConfig(speed=200.0))
    manifest = batch(tmp_path, n)
    down = SickPolls(emu, sick=n)
    quick = {"min_poll": 0.01, "max_poll": 0.2}
    with retrying.set_testing():
        first = await run_batch(
            load_manifest(manifest),
            settings(emu, n, outage_limit=1.0, **quick),
            transport=down,
        )
        assert first.outcome.stopped == "outage"
        assert states(manifest) == [JobState.RUNNING] * n
        assert len(down.failed) > n  # polled again after failures, not given up on
        second = await run_batch(
            load_manifest(manifest), settings(emu, n, **quick), transport=SlowPolls(emu)
        )
    assert second.outcome.stopped is None
    assert states(manifest) == [JobState.DONE] * n
    assert sorted(emu.charges_by_key().values()) == [1] * n


class CheckIntent(httpx.AsyncBaseTransport):
    """The emulator in-process; at each create, reads the ledger from *another* connection:
    what it sees is what a crash at that instant would leave."""

    def __init__(self, emu: Emulator, ledger: Path) -> None:
        self.inner = httpx.ASGITransport(app=emu.app)
        self.ledger = ledger
        self.seen: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Before forwarding a create, note its job's committed state."""
        if request.method == "POST" and request.url.path.endswith("/runs"):
            key = request.headers["idempotency-key"]
            with sqlite3.connect(self.ledger) as other:
                row = other.execute(
                    "SELECT state FROM jobs WHERE idempotency_key = ?", (key,)
                ).fetchone()
            self.seen.append(row[0] if row else "missing")
        return await self.inner.handle_async_request(request)


async def test_a_create_leaves_only_once_its_submitting_is_committed(tmp_path: Path) -> None:
    """Grouped commits must not let a paid create out before the record that it is leaving:
    at every create, another connection already sees the job ``submitting``."""
    n = 40
    emu = Emulator(EmulatorConfig(speed=200.0))
    manifest = batch(tmp_path, n)
    check = CheckIntent(emu, manifest.parent / "sched.ledger.db")
    with retrying.set_testing():
        result = await run_batch(
            load_manifest(manifest), settings(emu, n, min_poll=0.01, max_poll=0.3), transport=check
        )
    assert result.outcome.counts[JobState.DONE] == n
    assert check.seen == ["submitting"] * n
    assert sorted(emu.charges_by_key().values()) == [1] * n


async def test_a_resume_reads_done_jobs_light_and_refetches_only_a_lost_file(
    tmp_path: Path,
) -> None:
    """A resumed batch of done jobs: their files are checked, only the job whose file is
    gone is read whole and downloaded again (no new run); the counts still say all done."""
    n = 6
    emu = Emulator(EmulatorConfig(speed=200.0))
    manifest = batch(tmp_path, n)
    quick = settings(emu, n, min_poll=0.01, max_poll=0.3)
    with retrying.set_testing():
        await run_batch(load_manifest(manifest), quick, transport=SlowPolls(emu))
        files = sorted((tmp_path / "results").rglob("*.png"))
        assert len(files) == n
        files[2].unlink()
        seen: list[worker.Worker] = []
        again = await run_batch(
            load_manifest(manifest), quick, transport=SlowPolls(emu), on_worker=seen.append
        )
    (w,) = seen
    assert len(w.jobs) == 1 and w.saved_count == n - 1  # only the one with a lost file whole
    assert again.outcome.counts[JobState.DONE] == n
    assert files[2].exists()
    assert sorted(emu.charges_by_key().values()) == [1] * n


async def test_a_file_lands_only_once_its_job_s_run_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file put under its final name must belong to a run the ledger has on disk: at each
    rename, another connection sees the job with its run id (so a crash right after leaves
    no file that a resume cannot account for: it polls that run and fetches it again).
    Each run has one output, so the job is still ``running``: ``finish_run`` records the
    run's end and the file in one commit, after the rename.  Groups stay open 0.3 s, so
    a run completes and its file is fetched while its ``running`` is still in the group."""
    monkeypatch.setattr(worker, "_COMMIT_WINDOW", 0.3)
    n = 8  # creates are one at a time per technique: each waits for its own commit
    emu = Emulator(EmulatorConfig(speed=200.0))
    manifest = batch(tmp_path, n)
    ledger_path = manifest.parent / "sched.ledger.db"
    seen: list[tuple[str, bool]] = []

    def watch(w: worker.Worker) -> None:
        commit = w.results.commit

        def checked(tmp: Path, relative: str, *, synced: bool = False) -> Path | str:
            with sqlite3.connect(ledger_path) as other:
                state, run_id = other.execute(
                    "SELECT state, run_id FROM jobs WHERE row_id = ?", (relative.split("-")[0],)
                ).fetchone()
            seen.append((state, run_id is not None))
            return commit(tmp, relative, synced=synced)

        w.results.commit = checked  # type: ignore[method-assign]

    with retrying.set_testing():
        result = await run_batch(
            load_manifest(manifest),
            settings(emu, n, min_poll=0.01, max_poll=0.3),
            transport=SlowPolls(emu),
            on_worker=watch,
        )
    assert result.outcome.counts[JobState.DONE] == n
    assert seen == [("running", True)] * n


async def test_a_reconcile_never_adopts_the_run_of_a_job_loaded_light(tmp_path: Path) -> None:
    """A done job is loaded without its record, but its run is still known: a job whose
    create may have left before that run was made must not take it as its own."""
    emu = Emulator(EmulatorConfig(speed=200.0))
    quick = settings(emu, 2, min_poll=0.01, max_poll=0.3)
    sent_before = time.time() - 1.0
    with retrying.set_testing():
        first = batch(tmp_path, 1)  # row S000 only: done, with its run
        await run_batch(load_manifest(first), quick, transport=SlowPolls(emu))
        both = batch(tmp_path, 2)  # the same batch, one row more (S001)
        prepared, _ = await plan_batch(load_manifest(both), quick, transport=SlowPolls(emu))
        ((key, spec),) = prepared.new_jobs()
        with Ledger.open(str(both.parent / "sched.ledger.db")) as ledger:
            ledger.record_planned([(key, spec)], quoted_cost={"studio-shot": 0.06}, now=1.0)
            ledger.mark_submitting(key, now=sent_before)  # its create "may have left"
            ledger.mark_needs_reconcile(
                key, now=sent_before, reason="409 duplicate", code="idempotency_duplicate"
            )
        result = await run_batch(load_manifest(both), quick, transport=SlowPolls(emu))
    assert result.outcome.counts[JobState.DONE] == 1
    with Ledger.open(str(both.parent / "sched.ledger.db")) as ledger:
        rec = ledger.get(key)
    assert (rec.state, rec.run_id) == (JobState.UNRESOLVED, None)


class LimitedOnce(httpx.AsyncBaseTransport):
    """The emulator in-process; the first poll answers 429 with ``retry-after``; every
    API request (``"429"`` for that one) is logged with its ``time.monotonic()``."""

    def __init__(self, emu: Emulator, retry_after: float) -> None:
        self.inner = httpx.ASGITransport(app=emu.app)
        self.retry_after = retry_after
        self.api: list[tuple[str, float]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Forward, except the first poll."""
        path = request.url.path
        if path.startswith("/_media/"):
            return await self.inner.handle_async_request(request)
        parts = path.split("/")
        poll = request.method == "GET" and len(parts) > 2 and parts[-2] == "runs"
        if poll and not any(kind == "429" for kind, _ in self.api):
            self.api.append(("429", time.monotonic()))
            body = {"error": {"code": "rate_limited", "message": "Rate limit exceeded."}}
            return httpx.Response(429, json=body, headers={"retry-after": str(self.retry_after)})
        self.api.append(("poll" if poll else request.method, time.monotonic()))
        return await self.inner.handle_async_request(request)


async def test_a_429_on_a_poll_pauses_every_poll_and_halves_the_pool(tmp_path: Path) -> None:
    """FLORA's rate limit is the workspace's: after a poll's 429 with ``retry-after: 1``,
    no request goes out for that second (the other runs' polls wait too), the in-flight
    limit is halved as after a create's 429, and the batch still ends paid once."""
    n = 8
    clock = Clock()
    emu = Emulator(EmulatorConfig(speed=1.0, clock=clock))
    manifest = batch(tmp_path, n)
    seen: list[worker.Worker] = []
    with retrying.set_testing():
        await created_then_stopped(manifest, emu, n, clock)
        clock.offset += 3600  # every run has ended by the resume
        limited = LimitedOnce(emu, retry_after=1.0)
        await run_batch(
            load_manifest(manifest),
            settings(emu, n, min_poll=0.05, max_poll=0.5),
            transport=limited,
            clock=clock,
            on_worker=seen.append,
        )
    kinds = [kind for kind, _ in limited.api]
    hit = kinds.index("429")
    after = [at for _, at in limited.api[hit + 1 :]]
    assert after and min(after) - limited.api[hit][1] >= 0.95, limited.api
    assert seen[0].pacer.limit == n // 2
    assert states(manifest) == [JobState.DONE] * n
    assert sorted(emu.charges_by_key().values()) == [1] * n

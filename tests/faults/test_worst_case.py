"""The promise against FLORA's worst case (issue #16): one test per hole a kind emulator hid.

Each emulator here behaves as CONTRACT.md says FLORA *may*: its clock off ours, bills
above quotes (or no quote at all, or late), a key forgotten after its window, a 4xx to a
same-key repeat, a run history longer than a page, a poll that answers 404.  Each test
failed before its fix; each ends on the emulator's own books.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fault_helpers import (
    FAST,
    check_promise,
    creates,
    kill_when,
    read_jobs,
    run_cli,
    tree,
    write_batch,
)
from inproc import CrashingTransport, TravelClock, fast_settings, run_crashing, run_once

from flora_batch.emulator import CREATE, Emulator, EmulatorConfig
from flora_batch.ledger import Ledger
from flora_batch.types import JobState
from flora_batch.worker import loop as worker

pytestmark = pytest.mark.usefixtures("retry_fast")

COST = 0.06  # studio-shot's run_cost in the emulator's catalog


def emulator(**kw: object) -> Emulator:
    """An in-process emulator, fast by default."""
    kw.setdefault("speed", 1000.0)
    return Emulator(EmulatorConfig(**kw))  # type: ignore[arg-type]


class SlowCreates(CrashingTransport):
    """Each create takes ``seconds`` on the shared clock (the clock jumps as it is sent)."""

    def __init__(self, emu: Emulator, clock: TravelClock, seconds: float) -> None:
        super().__init__(emu)
        self.clock, self.seconds = clock, seconds

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.clock.travel(self.seconds)
        return await super().handle_async_request(request)


class RefusedCreates(CrashingTransport):
    """Creates never reach FLORA (connection refused) while ``refusing``."""

    refusing = True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and self.refusing:
            raise httpx.ConnectError("connection refused", request=request)
        return await super().handle_async_request(request)


# -- 1. a key resent after its window ---------------------------------------------------


async def test_a_key_is_never_sent_again_once_its_window_may_be_over(tmp_path: Path) -> None:
    """The first create lands (its answer a 500), the next ones meet 503s for longer than
    the key's window: the key is not sent again past it (FLORA would have forgotten it and
    made a second run); the first run is found in the history and adopted."""
    clock = TravelClock()
    emu = emulator(idempotency="replay", key_window=100.0, clock=clock)
    manifest = write_batch(tmp_path / "b", 1)
    emu.inject("error_after_create")
    emu.inject("unavailable_before_create", times=2)
    settings = fast_settings(emu, key_window=100.0)
    await run_once(manifest, settings, SlowCreates(emu, clock, 40.0), clock=clock)
    [job] = read_jobs(manifest)
    assert emu.charges_by_key() == {job.idempotency_key: 1}
    assert job.state is JobState.DONE and job.run_id == next(iter(emu.runs))
    assert emu.request_counts[CREATE] == 3  # the fourth, past the window, never left


# -- 2. max_cost against bills that are not quotes ---------------------------------------


@pytest.mark.parametrize(
    ("quote", "late"), [("exact", 0.0), ("zero", 0.0), ("missing", 0.0), ("exact", 0.05)]
)
async def test_max_cost_holds_when_bills_exceed_quotes(
    tmp_path: Path, quote: str, late: float
) -> None:
    """Bills at 3x the quote (or no quote at all, or bills that come late): the batch stops
    at the cap, never above it; the first run of the technique is bought alone."""
    emu = emulator(bill_factor=3.0, quote=quote, late_charge=late)
    cap = 4 * COST
    manifest = write_batch(tmp_path / "b", 10, extra=f"max_cost: {cap}\n")
    result = await run_once(manifest, fast_settings(emu, concurrency=4), CrashingTransport(emu))
    assert result.outcome.stopped == "budget"
    assert emu.our_total_charged() <= cap + 1e-9
    assert emu.our_total_charged() == pytest.approx(3 * COST)  # one bill of 3x, then no room
    assert result.outcome.spent == pytest.approx(emu.our_total_charged())
    assert result.outcome.notes == []


async def test_a_first_bill_above_the_whole_cap_is_said_plainly(tmp_path: Path) -> None:
    """The first run fits its quote under the cap but bills above it: bought alone, nothing
    after it, and the summary says how much above the cap and why."""
    emu = emulator(bill_factor=3.0)
    manifest = write_batch(tmp_path / "b", 5, extra=f"max_cost: {2 * COST}\n")
    result = await run_once(manifest, fast_settings(emu, concurrency=4), CrashingTransport(emu))
    assert emu.our_total_charged() == pytest.approx(3 * COST)
    assert len(emu.runs) == 1
    [note] = result.outcome.notes
    assert "above max_cost" in note and "studio-shot" in note and "0.18" in note


# -- 7. a job that sent nothing never adopts a run -------------------------------------


async def test_a_job_whose_creates_never_left_is_sent_again_not_reconciled(
    tmp_path: Path,
) -> None:
    """Every create of a job is refused at connect: it goes back to ``planned``.  Hours later,
    with someone else's run in the history in between, it is bought as itself: it never
    adopts a run it could not have made."""
    clock = TravelClock()
    emu = emulator(idempotency="conflict", clock=clock)
    manifest = write_batch(tmp_path / "b", 1)
    refused = RefusedCreates(emu)
    await run_once(manifest, fast_settings(emu, max_runtime=1.0), refused, clock=clock)
    [job] = read_jobs(manifest)
    assert job.state is JobState.PLANNED and job.submitted_at is None
    clock.travel(600)
    emu.add_foreign_runs("studio-shot", [clock()])
    clock.travel(3 * 3600)
    refused.refusing = False
    await run_once(manifest, fast_settings(emu), refused, clock=clock)
    [job] = read_jobs(manifest)
    assert job.state is JobState.DONE
    assert emu.runs[job.run_id or ""].idempotency_key == job.idempotency_key
    assert emu.charges_by_key() == {job.idempotency_key: 1}


async def test_a_run_of_another_batch_in_the_ledger_is_never_adopted(tmp_path: Path) -> None:
    """A job killed with its create in the air (its key later expired) and, meanwhile, a
    batch of the same ledger made a run in that window: that run belongs to its job for
    ever, so the reconciliation does not take it; the job, which sent nothing, is bought."""
    clock = TravelClock()
    emu = emulator(idempotency="conflict", clock=clock)
    ledger = f"sqlite:///{tmp_path / 'shared.db'}"
    first = write_batch(tmp_path / "one", 1, name="one")
    second = write_batch(tmp_path / "two", 1, name="two")
    settings = fast_settings(emu, ledger=ledger)
    transport = CrashingTransport(emu)
    died = await run_crashing(second, settings, transport, ("create", 1, "before"), clock=clock)
    assert died is None
    await run_once(first, settings, transport, clock=clock)
    clock.travel(3 * 3600)  # the key of "two" is past its window
    await run_once(second, settings, transport, clock=clock)
    with Ledger.open(ledger) as opened:
        jobs = {j.batch: j for j in opened.jobs()}
    assert jobs["one"].run_id != jobs["two"].run_id
    for job in jobs.values():
        assert job.state is JobState.DONE
        assert emu.runs[job.run_id or ""].idempotency_key == job.idempotency_key
    assert sorted(emu.charges_by_key().values()) == [1, 1]


# -- 8. clock skew ----------------------------------------------------------------------


@pytest.mark.parametrize("skew", [-45.0, 30.0])
async def test_a_skewed_server_clock_does_not_hide_the_run_a_409_proved(
    tmp_path: Path, skew: float
) -> None:
    """409 mode, the server's clock off ours by more than the old 2-s slack: the dropped
    create's run is found and adopted (the first create never answered, so no offset was
    learned: the window is wide, and the known runs narrow it)."""
    emu = emulator(idempotency="conflict", clock_skew=skew)
    manifest = write_batch(tmp_path / "b", 3)
    emu.inject("drop_after_create")
    await run_once(manifest, fast_settings(emu, concurrency=3), CrashingTransport(emu))
    jobs = read_jobs(manifest)
    assert [j.state for j in jobs] == [JobState.DONE] * 3
    assert sorted(emu.charges_by_key().values()) == [1, 1, 1]
    for job in jobs:
        assert emu.runs[job.run_id or ""].idempotency_key == job.idempotency_key


async def test_the_server_clock_offset_is_kept_for_the_next_process(tmp_path: Path) -> None:
    """A run learns the server clock's offset from its creates and leaves it in the ledger;
    the next process reconciles with it before it has sent anything."""
    emu = emulator(clock_skew=30.0)
    manifest = write_batch(tmp_path / "b", 2)
    await run_once(manifest, fast_settings(emu), CrashingTransport(emu))
    with Ledger.open(manifest.with_name("mugs.ledger.db")) as ledger:
        stored = ledger.get_meta("server-clock-offset")
    assert stored is not None and abs(float(stored) - 30.0) < 1.0


# -- 9. a SIGKILL with creates in the air, 409 mode --------------------------------------


@pytest.mark.slow
def test_a_kill_with_creates_in_the_air_leaves_no_paid_run_behind(serve, tmp_path: Path) -> None:
    """409 mode, creates that take 0.3 s: the CLI is killed once three creates have reached
    FLORA.  Every run is matched to its job and downloaded: none unresolved."""
    server = serve(idempotency="conflict", create_latency=0.3, speed=200.0)
    manifest = write_batch(tmp_path / "b", 6)
    before = tree(manifest.parent)
    args = ["run", str(manifest), *FAST, "--concurrency", "6"]
    emu = server.emulator
    logs = tmp_path / "logs"
    logs.mkdir()
    here = manifest.parent
    killed = kill_when(server, args, logs / "kill.log", lambda: creates(emu) >= 3, cwd=here)
    assert killed.killed
    for n in range(4):
        last = run_cli(server, args, logs / f"rerun-{n}.log", cwd=here)
        if last.code == 0:
            break
    assert last.code == 0, last.out
    jobs = check_promise(server, manifest, before)
    assert [j.state for j in jobs] == [JobState.DONE] * 6


# -- 10. a 4xx to a same-key repeat -------------------------------------------------------


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_a_4xx_to_a_repeat_of_a_create_that_landed_is_reconciled(
    tmp_path: Path, status: int
) -> None:
    """The first create lands but its answer is lost; FLORA answers the repeat with a 4xx:
    the job is not failed (its paid run would never be fetched), its run is found and
    downloaded."""
    emu = emulator(duplicate_status=status)
    manifest = write_batch(tmp_path / "b", 1)
    emu.inject("drop_after_create")
    await run_once(manifest, fast_settings(emu), CrashingTransport(emu))
    [job] = read_jobs(manifest)
    assert job.state is JobState.DONE, job.error_message
    assert emu.charges_by_key() == {job.idempotency_key: 1}
    assert job.run_id == next(iter(emu.runs))


# -- 11. a run history longer than the pages read ------------------------------------------


async def test_a_history_longer_than_the_old_page_limit_is_read_to_its_end(
    tmp_path: Path,
) -> None:
    """Pages of two, 100 runs of other clients made after ours: the reconciliation reads
    every page down to the job's window (a history cut short is not "no such run")."""
    clock = TravelClock()
    emu = emulator(idempotency="conflict", history_page_cap=2, clock=clock)
    manifest = write_batch(tmp_path / "b", 1)
    transport = CrashingTransport(emu)
    died = await run_crashing(
        manifest, fast_settings(emu), transport, ("create", 1, "after"), clock=clock
    )
    assert died is None
    start = clock()
    emu.add_foreign_runs("studio-shot", [start + 900 + i for i in range(100)])
    clock.travel(1200)
    await run_once(manifest, fast_settings(emu), transport, clock=clock)
    [job] = read_jobs(manifest)
    assert job.state is JobState.DONE, job.error_message
    assert emu.runs[job.run_id or ""].idempotency_key == job.idempotency_key


async def test_a_cut_history_is_not_complete(tmp_path: Path) -> None:
    """``technique_runs`` says whether it reached as far back as asked."""
    from flora_batch.remote.client import FloraClient

    emu = emulator(history_page_cap=2)
    now = emu.now()
    emu.add_foreign_runs("studio-shot", [now - i for i in range(10)])
    transport = httpx.ASGITransport(app=emu.app)
    tech, key = "tech_studio-shot", emu.config.api_key
    async with FloraClient("http://127.0.0.1/api/v1", key, transport=transport) as c:
        cut = await c.technique_runs(tech, newer_than=(now - 100) * 1000, max_pages=3)
        whole = await c.technique_runs(tech, newer_than=(now - 100) * 1000)
        reached = await c.technique_runs(tech, newer_than=(now - 3.5) * 1000, max_pages=3)
    assert (len(cut.runs), cut.complete) == (6, False)
    assert (len(whole.runs), whole.complete) == (10, True)
    assert reached.complete


# -- 13. a poll that answers 404 -----------------------------------------------------------


async def test_a_run_flora_stops_showing_becomes_unresolved_and_comes_back(
    tmp_path: Path,
) -> None:
    """Polls of a run answer 404 (its key's workspace changed): the job is ``unresolved``
    with its run kept and a message that says what happened, never "running" for ever;
    once FLORA shows the run again, the next run fetches it, paid once."""
    clock = TravelClock()
    emu = emulator(speed=1.0, clock=clock)
    manifest = write_batch(tmp_path / "b", 1)
    transport = CrashingTransport(emu)
    await run_once(manifest, fast_settings(emu, max_runtime=0.5), transport, clock=clock)
    [job] = read_jobs(manifest)
    assert job.state is JobState.RUNNING
    hidden = emu.runs.pop(job.run_id or "")
    result = await run_once(manifest, fast_settings(emu), transport, clock=clock)
    [job] = read_jobs(manifest)
    assert job.state is JobState.UNRESOLVED and job.run_id == hidden.run_id
    assert "404" in (job.error_message or "") and "--resubmit-unresolved" in (
        job.error_message or ""
    )
    assert [j.key for j in result.unresolved] == [job.key]
    emu.runs[hidden.run_id] = hidden
    clock.travel(3600)
    await run_once(manifest, fast_settings(emu), transport, clock=clock)
    [job] = read_jobs(manifest)
    assert job.state is JobState.DONE and job.run_id == hidden.run_id
    assert emu.charges_by_key() == {job.idempotency_key: 1}


# -- in-process crashes lose the open group ------------------------------------------------


async def test_an_in_process_crash_does_not_commit_the_open_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "crash" (the batch task cancelled) leaves the ledger as a SIGKILL would: what the
    open group of commits held is lost, not flushed on the way out."""
    monkeypatch.setattr(worker, "_COMMIT_WINDOW", 1.0)  # each group stays open a second
    emu = emulator(speed=1.0)
    manifest = write_batch(tmp_path / "b", 1)
    transport = CrashingTransport(emu)
    # Requests: the technique, the create, then the first poll: the crash comes there,
    # with the create's ``running`` still in the open group.
    died = await run_crashing(manifest, fast_settings(emu), transport, ("any", 3, "before"))
    assert died is None
    [job] = read_jobs(manifest)
    assert job.state is JobState.SUBMITTING and job.run_id is None

"""The run history as a busy workspace shows it: skewed clocks, other clients' runs, late
visibility, capped pages, and cursors that hold while runs keep arriving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from emulator_helpers import client_for, create, finish, upload_direct

from flora_batch.emulator import Emulator, FaultPlan, ManualClock


async def _history(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every page of ``/technique-runs``, following ``meta.next_cursor``."""
    items: list[dict[str, Any]] = []
    query = dict(params)
    while True:
        r = await client.get("/technique-runs", params=query)
        assert r.status_code == 200, r.text
        items += r.json()["technique_runs"]
        cursor = r.json()["meta"]["next_cursor"]
        if not cursor:
            return items
        query["cursor"] = cursor


@pytest.mark.parametrize("skew", [3600.0, -90.5])
async def test_clock_skew_shifts_every_rendered_run_timestamp(
    make_emu: Callable[..., Emulator], clock: ManualClock, skew: float
) -> None:
    """``created_at``, ``started_at`` and ``completed_at`` are off by the skew in create, poll
    and history answers; the run's own timeline does not move."""
    emu = make_emu(clock_skew=skew)
    async with client_for(emu) as c:
        created = (await create(c, key="a")).json()
        run = emu.runs[created["run_id"]]
        polled = await finish(c, clock, run.run_id)
        listed = (await c.get("/technique-runs")).json()["technique_runs"][0]
    shift = round(skew * 1000)
    assert created["created_at"] == round(run.created_at * 1000) + shift
    for body in (polled, listed):
        assert body["created_at"] == round(run.created_at * 1000) + shift
        assert body["started_at"] == round(run.started_at * 1000) + shift
        assert body["completed_at"] == round(run.ended_at * 1000) + shift
    assert run.created_at == clock.time - 3600  # finish() moved the clock an hour on


async def test_clock_skew_in_the_camel_dialect_and_on_assets(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """``createdAt`` in the older dialect and an asset's list ``created_at`` are skewed too."""
    emu = make_emu(clock_skew=10, dialect="camel")
    async with client_for(emu) as c:
        created = (await create(c, key="a")).json()
        await upload_direct(c)
        asset = (await c.get("/assets")).json()["assets"][0]
    assert created["createdAt"] == round((clock.time + 10) * 1000)
    assert asset["created_at"] == round((clock.time + 10) * 1000)


async def test_other_clients_runs_are_listed_billed_and_foreign(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """``other_clients=1``: each create brings someone else's runs of the same technique,
    listed like ours and billed to the workspace, but not in our books."""
    emu = make_emu(other_clients=1.0, other_clients_burst=2, other_clients_spread=0.5)
    async with client_for(emu) as c:
        ours = [(await create(c, key=f"k{n}")).json()["run_id"] for n in range(3)]
        clock.advance(1)  # past every foreign stamp (±0.5 s)
        items = await _history(c)
        ours_shape = {tuple(sorted(i)) for i in items if i["run_id"] in ours}
        theirs = [i for i in items if i["run_id"] not in ours]
        poll = (await c.get(f"/runs/{theirs[0]['run_id']}")).json()
    assert len(items) == 9 and len(theirs) == 6
    assert {tuple(sorted(i)) for i in theirs} == ours_shape  # same shape: nothing tells them apart
    assert {i["technique"]["technique_id"] for i in theirs} == {"tech_icon-pack"}
    assert poll["status"] == "pending"
    foreign = [r for r in emu.runs.values() if r.foreign]
    assert len(foreign) == 6 and all(r.idempotency_key is None for r in foreign)
    assert all(abs(r.created_at - clock.time + 1) <= 0.5 for r in foreign)
    assert emu.charges_by_key() == {"k0": 1, "k1": 1, "k2": 1}
    assert emu.our_total_charged() == pytest.approx(0.6)
    assert emu.total_charged() == pytest.approx(1.8)
    assert sum(c.foreign for c in emu.charges) == 6
    state = emu.snapshot()
    assert sum(r["foreign"] for r in state["runs"]) == 6
    assert state["our_total_charged"] == pytest.approx(0.6)


async def test_other_clients_are_seeded_and_reproducible(
    make_emu: Callable[..., Emulator],
) -> None:
    """The same seed gives the same neighbours; another seed others."""

    async def foreign_pattern(seed: int) -> list[int]:
        emu = make_emu(other_clients=0.5, faults=FaultPlan(seed=seed))
        async with client_for(emu) as c:
            for n in range(12):
                await create(c, key=f"k{n}")
        return [r.seq for r in emu.runs.values() if r.foreign]

    first = await foreign_pattern(1)
    assert first == await foreign_pattern(1)
    assert 0 < len(first) < 12
    assert first != await foreign_pattern(2)


async def test_a_foreign_run_stamped_in_the_future_shows_once_the_clock_gets_there(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """A neighbour's run stamped after now is absent from the history until its time."""
    emu = make_emu(other_clients=1.0, other_clients_burst=8, other_clients_spread=5.0)
    async with client_for(emu) as c:
        await create(c, key="k")
        future = [r for r in emu.runs.values() if r.foreign and r.created_at > clock.time]
        assert future, "eight stamps within ±5 s: some lie in the future"
        shown = {i["run_id"] for i in await _history(c)}
        clock.advance(5)
        later = {i["run_id"] for i in await _history(c)}
    assert not shown & {r.run_id for r in future}
    assert {r.run_id for r in future} <= later and len(later) == 9


async def test_other_clients_runs_fail_and_complete_like_any_run(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """Neighbours' runs meet the fault plan's run failures, and finish like ours."""
    emu = make_emu(
        other_clients=1.0, other_clients_burst=6, faults=FaultPlan(seed=3, run_failure=0.5)
    )
    async with client_for(emu) as c:
        await create(c, key="k")
        clock.advance(3600)
        statuses = {i["status"] for i in await _history(c)}
    assert statuses == {"completed", "failed"}


async def test_a_forced_run_failure_is_left_for_our_run(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """``inject("run_failure")`` strikes our next run, not a neighbour's."""
    emu = make_emu(other_clients=1.0, other_clients_burst=3)
    emu.inject("run_failure", code="provider_error")
    async with client_for(emu) as c:
        ours = (await create(c, key="k")).json()["run_id"]
    assert emu.runs[ours].error_code == "provider_error"
    assert all(r.error_code is None for r in emu.runs.values() if r.foreign)


async def test_history_delay_hides_fresh_runs(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """A run shows in the history only ``history_delay`` seconds after its ``created_at``;
    polling it by id works at once."""
    emu = make_emu(history_delay=5)
    async with client_for(emu) as c:
        run_id = (await create(c, key="k")).json()["run_id"]
        assert (await c.get(f"/runs/{run_id}")).status_code == 200
        assert await _history(c) == []
        clock.advance(4.9)
        assert await _history(c) == []
        clock.advance(0.1)
        assert [i["run_id"] for i in await _history(c)] == [run_id]


async def test_history_page_cap_forces_paging(make_emu: Callable[..., Emulator]) -> None:
    """``history_page_cap=5``: ``limit=100`` still gets 5 items a page and a cursor."""
    emu = make_emu(history_page_cap=5)
    async with client_for(emu) as c:
        ids = [(await create(c, key=f"k{n}")).json()["run_id"] for n in range(12)]
        first = (await c.get("/technique-runs", params={"limit": 100})).json()
        small = (await c.get("/technique-runs", params={"limit": 3})).json()
        everything = await _history(c, limit=100)
    assert len(first["technique_runs"]) == 5 and first["meta"]["next_cursor"]
    assert len(small["technique_runs"]) == 3
    assert [i["run_id"] for i in everything] == ids[::-1]


async def test_history_is_newest_first_by_created_time_then_sequence(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """Runs stamped out of booking order (neighbours' runs) are listed by their stamps."""
    emu = make_emu(other_clients=1.0, other_clients_burst=4, other_clients_spread=2.0)
    async with client_for(emu) as c:
        for n in range(3):
            await create(c, key=f"k{n}")
            clock.advance(1)
        clock.advance(3)
        items = await _history(c, limit=4)
    expected = sorted(emu.runs.values(), key=lambda r: (round(r.created_at * 1000), r.seq))
    assert [i["run_id"] for i in items] == [r.run_id for r in reversed(expected)]
    stamps = [i["created_at"] for i in items]
    assert stamps == sorted(stamps, reverse=True)


async def test_cursors_hold_while_runs_arrive_between_pages(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """Paging while our creates (and neighbours' runs, some stamped in the past) arrive
    neither skips nor repeats any run older than the cursor."""
    emu = make_emu(
        other_clients=1.0, other_clients_burst=2, other_clients_spread=3.0, history_page_cap=4
    )
    async with client_for(emu) as c:
        for n in range(6):
            await create(c, key=f"old{n}")
            clock.advance(1)
        clock.advance(3)
        before = [i["run_id"] for i in await _history(c)]
        seen: list[str] = []
        query: dict[str, Any] = {}
        while True:
            body = (await c.get("/technique-runs", params=query)).json()
            seen += [i["run_id"] for i in body["technique_runs"]]
            await create(c, key=f"new{len(seen)}")  # and its neighbours, maybe in the past
            if not body["meta"]["next_cursor"]:
                break
            query["cursor"] = body["meta"]["next_cursor"]
    assert len(seen) == len(set(seen))
    assert [r for r in seen if r in before] == before


async def test_an_old_style_cursor_is_a_validation_error(client: httpx.AsyncClient) -> None:
    """A cursor this server did not make is 400 ``input_validation_error`` on ``cursor``."""
    r = await client.get("/technique-runs", params={"cursor": "eyJiZWZvcmUiOjN9"})
    assert r.status_code == 400
    assert r.json()["error"]["fields"][0]["field"] == "cursor"

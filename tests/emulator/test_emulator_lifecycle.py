"""Run lifecycle on a manual clock: pending → running → completed|failed, never sleeping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from emulator_helpers import client_for, create, finish

from flora_batch.emulator import Emulator, ManualClock


async def _poll(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    r = await client.get(f"/techniques/icon-pack/runs/{run_id}")
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


async def test_run_goes_pending_running_completed(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Progress rises while running; completion brings outputs, 100 and completed_at."""
    created = await create(client)
    assert created.status_code == 201
    run = created.json()
    assert (run["status"], run["progress"]) == ("pending", 0)
    assert run["created_at"] == int(clock.time * 1000)
    assert "outputs" not in run and "started_at" not in run
    seen: list[tuple[str, int]] = []
    for _ in range(80):
        clock.advance(1)
        body = await _poll(client, run["run_id"])
        seen.append((body["status"], body["progress"]))
        if body["status"] == "completed":
            break
    statuses = [s for s, _ in seen]
    assert statuses[0] in ("pending", "running")
    running = [p for s, p in seen if s == "running"]
    assert len(running) > 10 and running == sorted(running) and running[-1] < 100
    assert seen[-1] == ("completed", 100)
    assert body["started_at"] < body["completed_at"]
    assert len(body["outputs"]) == 6


async def test_durations_are_realistic_and_scaled_by_speed(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """Image techniques take tens of seconds, video minutes; ``speed`` divides both."""
    for speed in (1.0, 20.0):
        emu = make_emu(speed=speed)
        async with client_for(emu) as c:
            image = (await create(c, "icon-pack", key=f"i{speed}")).json()["run_id"]
            video = (await create(c, "product-animator", key=f"v{speed}")).json()["run_id"]
        i, v = emu.runs[image], emu.runs[video]
        assert (i.ended_at - i.created_at) * speed >= 60
        assert (v.ended_at - v.created_at) * speed >= 180
        assert i.ended_at - i.created_at < v.ended_at - v.created_at
        assert 1 / speed <= i.started_at - i.created_at <= 10 / speed


async def test_failed_run_looks_finished(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """A failed run has error_code/message, progress 100, completed_at, and no outputs."""
    emu.inject("run_failure", code="model_timeout")
    run_id = (await create(client)).json()["run_id"]
    body = await finish(client, clock, run_id)
    assert body["status"] == "failed"
    assert body["error_code"] == "model_timeout"
    assert body["error_message"]
    assert body["progress"] == 100
    assert body["completed_at"] >= body["started_at"]
    assert "outputs" not in body


async def test_failure_happens_part_way(emu: Emulator, client: httpx.AsyncClient) -> None:
    """A failing run ends before its full duration would have."""
    emu.inject("run_failure")
    run = emu.runs[(await create(client)).json()["run_id"]]
    assert run.started_at < run.ended_at < run.started_at + run.run_seconds


async def test_state_is_read_lazily_from_the_clock(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """No background task: the status only changes when the clock does."""
    run_id = (await create(client)).json()["run_id"]
    assert emu.status(run_id) == "pending"
    assert emu.status(run_id) == "pending"
    clock.advance(3600)
    assert emu.status(run_id) == "completed"


async def test_max_running_queues_fifo(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """With ``max_running=2`` at most two runs overlap, and they start in creation order."""
    emu = make_emu(max_running=2)
    async with client_for(emu) as c:
        ids = [(await create(c, key=f"k{n}")).json()["run_id"] for n in range(5)]
    runs = [emu.runs[i] for i in ids]
    assert [r.started_at for r in runs] == sorted(r.started_at for r in runs)
    events = sorted([(r.started_at, 1) for r in runs] + [(r.ended_at, -1) for r in runs])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert peak == 2
    clock.advance(runs[0].started_at - clock.time + 1)
    assert [emu.status(i) for i in ids] == ["running", "running", "pending", "pending", "pending"]


async def test_without_max_running_runs_overlap(emu: Emulator, client: httpx.AsyncClient) -> None:
    """By default every run starts after its own short queue time."""
    ids = [(await create(client, key=f"k{n}")).json()["run_id"] for n in range(5)]
    assert len({emu.runs[i].started_at for i in ids}) == 1


async def test_late_charge_hides_charged_cost_after_the_end(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """``charged_cost`` is the quote, absent for ``late_charge`` seconds after the end."""
    emu = make_emu(late_charge=30)
    async with client_for(emu) as c:
        created = (await create(c)).json()
        assert created["charged_cost"] == 0.2
        run = emu.runs[created["run_id"]]
        clock.advance(run.ended_at - clock.time + 1)
        during = (await c.get(f"/runs/{run.run_id}")).json()
        clock.advance(30)
        after = (await c.get(f"/runs/{run.run_id}")).json()
    assert during["status"] == "completed" and "charged_cost" not in during
    assert after["charged_cost"] == 0.2


async def test_timestamps_are_unix_milliseconds(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """created_at, started_at and completed_at are integers in ms."""
    body = await finish(client, clock, (await create(client)).json()["run_id"])
    for name in ("created_at", "started_at", "completed_at"):
        assert isinstance(body[name], int) and body[name] > 1_700_000_000_000

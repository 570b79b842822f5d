"""Inspection: the admin routes, the Python API, and the run history list."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from emulator_helpers import client_for, create, finish

from flora_batch.emulator import (
    CREATE,
    LIST_RUNS,
    MEDIA,
    POLL_ANY,
    TECHNIQUE,
    Emulator,
    ManualClock,
    create_app,
)


async def test_state_route_shows_runs_charges_and_counts(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """``GET /_emulator/state`` (no auth) lists runs with key, technique, status and charge."""
    run_id = (await create(client, key="k1")).json()["run_id"]
    await client.get("/techniques/icon-pack")
    url = (await finish(client, clock, run_id))["outputs"][0]["url"]
    await client.get(url)
    async with httpx.AsyncClient(transport=client._transport) as anonymous:
        state = (await anonymous.get("http://testserver/_emulator/state")).json()
    [run] = state["runs"]
    assert (run["run_id"], run["idempotency_key"], run["technique"]) == (run_id, "k1", "icon-pack")
    assert (run["status"], run["charged"], run["refunded"]) == ("completed", 0.2, False)
    assert state["charges"][0]["amount"] == 0.2 and state["charges_by_key"] == {"k1": 1}
    assert state["total_charged"] == 0.2
    assert state["request_counts"] == {CREATE: 1, TECHNIQUE: 1, POLL_ANY: 1, MEDIA: 1}
    assert list(state["served_media"]) == [f"{run_id}/output_1"]
    assert state["assets"] == []


async def test_reset_route_forgets_everything(make_emu: Callable[..., Emulator]) -> None:
    """``POST /_emulator/reset`` clears runs, charges, keys, counts and restores the balance."""
    emu = make_emu(balance=1.0)
    async with client_for(emu) as c:
        await create(c, key="k")
        r = await c.post("http://testserver/_emulator/reset")
        assert r.status_code == 200
        assert emu.runs == {} and emu.charges == [] and emu.balance == 1.0
        assert dict(emu.request_counts) == {}
        again = await create(c, key="k")
    assert again.status_code == 201  # the key was forgotten too


async def test_python_api(emu: Emulator, client: httpx.AsyncClient) -> None:
    """runs, charges, request_counts, charges_by_key(), total_charged() and reset()."""
    a = (await create(client, key="a")).json()["run_id"]
    await create(client, key="a")
    await create(client, "cctv-cam", key="b")
    record = emu.runs[a]
    assert (record.idempotency_key, record.technique, record.charged) == ("a", "icon-pack", 0.2)
    assert emu.request_counts[CREATE] == 3
    assert emu.charges_by_key() == {"a": 1, "b": 1}
    assert emu.total_charged() == pytest.approx(0.25)
    assert emu.state is emu
    emu.reset()
    assert emu.runs == {} and emu.total_charged() == 0


def test_create_app_exposes_its_emulator() -> None:
    """``create_app(cfg).state.emulator`` is the Emulator behind the app."""
    app = create_app()
    assert isinstance(app.state.emulator, Emulator)
    assert app.state.emulator.app is app


async def test_technique_runs_newest_first_with_extra_fields(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    """Items are run objects plus technique_run_id, project_id, workspace_id and technique."""
    ids = [(await create(client, key=f"k{n}")).json()["run_id"] for n in range(3)]
    body = (await client.get("/technique-runs")).json()
    items = body["technique_runs"]
    assert [i["run_id"] for i in items] == ids[::-1]
    first = items[0]
    assert first["technique_run_id"] == first["run_id"]
    assert (first["project_id"], first["workspace_id"]) == ("prj_emulator", "ws_emulator")
    assert first["technique"] == {"technique_id": "tech_icon-pack", "name": "Icon Pack"}
    assert body["meta"] == {"next_cursor": None, "total_estimate": 3}
    assert emu.request_counts[LIST_RUNS] == 1


async def test_technique_runs_filters(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """``technique_id`` (id or slug) and ``status`` filter; other workspaces see nothing."""
    icon = (await create(client, key="a")).json()["run_id"]
    cctv = (await create(client, "cctv-cam", key="b")).json()["run_id"]
    clock.advance(40)  # cctv-cam (25 s) is done, icon-pack (60 s) is not
    emu.inject("run_failure")
    await create(client, "cctv-cam", key="c")

    async def ids(**params: str) -> list[str]:
        r = await client.get("/technique-runs", params=params)
        assert r.status_code == 200, r.text
        return [i["run_id"] for i in r.json()["technique_runs"]]

    assert await ids(technique_id="tech_icon-pack") == [icon]
    assert len(await ids(technique_id="cctv-cam")) == 2
    assert await ids(status="completed") == [cctv]
    assert await ids(status="running") == [icon]
    assert await ids(technique_id="tech_cctv-cam", status="completed") == [cctv]
    assert await ids(workspace_id="ws_other") == []
    assert await ids(technique_id="tech_unknown") == []
    bad = await client.get("/technique-runs", params={"status": "done"})
    assert bad.status_code == 400 and bad.json()["error"]["fields"][0]["field"] == "status"


async def test_technique_runs_pagination_is_stable_under_new_runs(
    client: httpx.AsyncClient,
) -> None:
    """Cursor paging walks every run once, even when runs are created between pages."""
    created = [(await create(client, key=f"k{n}")).json()["run_id"] for n in range(7)]
    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 3}
    while True:
        body = (await client.get("/technique-runs", params=params)).json()
        seen += [i["run_id"] for i in body["technique_runs"]]
        await create(client, key=f"new{len(seen)}")  # newer runs must not shift the pages
        if not body["meta"]["next_cursor"]:
            break
        params["cursor"] = body["meta"]["next_cursor"]
    assert seen == created[::-1]

"""Both field dialects, 200 or 201 on create, and absolute poll URLs."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from emulator_helpers import AUTH, client_for, create, finish

from flora_batch import wire
from flora_batch.emulator import Emulator, ManualClock


async def test_snake_dialect_run_and_technique(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Default dialect: snake_case keys, USD costs."""
    technique = (await client.get("/techniques/icon-pack")).json()
    assert set(technique) == {
        "technique_id",
        "name",
        "description",
        "run_cost",
        "inputs",
        "outputs",
    }
    run = await finish(client, clock, (await create(client)).json()["run_id"])
    assert {"run_id", "poll_url", "charged_cost", "created_at", "outputs"} <= set(run)
    assert set(run["outputs"][0]) == {"output_id", "type", "url"}


async def test_camel_dialect(make_emu: Callable[..., Emulator], clock: ManualClock) -> None:
    """``dialect="camel"``: camelCase keys; ``runCost`` and ``chargedCost`` in credits."""
    emu = make_emu(dialect="camel")
    async with client_for(emu) as c:
        technique = (await c.get("/techniques/quick-reframe")).json()
        created = (await create(c, "quick-reframe")).json()
        emu.inject("run_failure", code="provider_error")
        failed_id = (await create(c, "quick-reframe", key="k2")).json()["runId"]
        done = await finish(c, clock, created["runId"])
        failed = (await c.get(f"/runs/{failed_id}")).json()
        listed = (await c.get("/technique-runs")).json()["technique_runs"][0]
    assert technique["techniqueId"] == "tech_quick-reframe" and technique["runCost"] == 40
    assert set(created) == {"runId", "status", "progress", "createdAt", "chargedCost", "pollUrl"}
    assert created["chargedCost"] == 40
    assert {"startedAt", "completedAt", "outputs"} <= set(done)
    assert set(done["outputs"][0]) == {"outputId", "type", "url"}
    assert failed["errorCode"] == "provider_error" and failed["errorMessage"]
    assert {"techniqueRunId", "projectId", "workspaceId"} <= set(listed)
    assert listed["technique"] == {"techniqueId": "tech_quick-reframe", "name": "Layout Resizer"}


async def test_wire_parsers_read_both_dialects(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """flora_batch.wire understands what each dialect sends (units stay apart)."""
    for dialect, unit, cost in (("snake", "usd", 0.2), ("camel", "credits", 200.0)):
        emu = make_emu(dialect=dialect)
        async with client_for(emu) as c:
            technique = wire.parse_technique((await c.get("/techniques/icon-pack")).json())
            run_id = wire.parse_run((await create(c)).json()).run_id
            run = wire.parse_run(await finish(c, clock, run_id))
        assert (technique.cost_unit, technique.run_cost) == (unit, cost)
        assert run.status == "completed" and len(run.outputs) == 6 and run.charged_cost == cost


@pytest.mark.parametrize("status", [200, 201])
async def test_create_status_is_configurable(
    make_emu: Callable[..., Emulator], status: int
) -> None:
    """``create_status`` picks 200 or 201 for a new run."""
    emu = make_emu(create_status=status)
    async with client_for(emu) as c:
        assert (await create(c)).status_code == status


async def test_poll_url_follows_the_request_base_url(emu: Emulator) -> None:
    """``poll_url`` is absolute and points back at whatever host and port the client used."""
    transport = httpx.ASGITransport(app=emu.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://emu.local:9999/api/v1", headers=AUTH
    ) as c:
        body = (await create(c)).json()
        assert (
            body["poll_url"]
            == f"http://emu.local:9999/api/v1/techniques/icon-pack/runs/{body['run_id']}"
        )
        assert (await c.get(body["poll_url"])).json()["run_id"] == body["run_id"]


def test_config_rejects_unknown_choices() -> None:
    """Typos in the config fail at construction."""
    from flora_batch.emulator import EmulatorConfig

    for bad in (
        {"dialect": "kebab"},
        {"create_status": 202},
        {"idempotency": "x"},
        {"speed": 0},
        {"max_running": 0},
    ):
        with pytest.raises(ValueError):
            EmulatorConfig(**bad)

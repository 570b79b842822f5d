"""Idempotency (CONTRACT.md §6): replay, 409 conflict, key window, carriers, key release."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from emulator_helpers import client_for, create, run_body

from flora_batch.emulator import Emulator, FaultPlan, ManualClock


async def test_replay_returns_the_existing_run_and_charges_nothing(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Seed-doc rule: a repeated key returns the existing run in its current state."""
    first = await create(client, key="k")
    clock.advance(3600)
    again = await create(client, key="k")
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.json()["status"] == "completed" and again.json()["outputs"]
    assert emu.charges_by_key() == {"k": 1} and len(emu.runs) == 1


async def test_replay_ignores_a_different_body(emu: Emulator, client: httpx.AsyncClient) -> None:
    """The key alone decides: a different body with the same key still replays."""
    first = await create(client, key="k", prompt="cats")
    again = await create(client, key="k", prompt="dogs")
    assert again.json()["run_id"] == first.json()["run_id"]


async def test_conflict_mode_is_409_without_run_id(make_emu: Callable[..., Emulator]) -> None:
    """``idempotency="conflict"``: 409 ``idempotency_duplicate``, and the envelope has no run id."""
    emu = make_emu(idempotency="conflict")
    async with client_for(emu) as c:
        await create(c, key="k")
        r = await create(c, key="k")
    assert r.status_code == 409
    assert r.json() == {
        "error": {"code": "idempotency_duplicate", "message": "Duplicate idempotency key."}
    }
    assert emu.charges_by_key() == {"k": 1}


async def test_key_window_forgets_old_keys(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """After ``key_window`` seconds the same key creates (and charges) a new run."""
    emu = make_emu(key_window=7200)
    async with client_for(emu) as c:
        first = (await create(c, key="k")).json()["run_id"]
        clock.advance(7199)
        assert (await create(c, key="k")).json()["run_id"] == first
        clock.advance(1)
        second = await create(c, key="k")
    assert second.status_code == 201 and second.json()["run_id"] != first
    assert emu.charges_by_key() == {"k": 2}


async def test_header_carrier(make_emu: Callable[..., Emulator]) -> None:
    """``idempotency_carrier="header"`` reads ``Idempotency-Key`` and ignores the body field."""
    emu = make_emu(idempotency_carrier="header")
    async with client_for(emu) as c:
        body = run_body(key="body-key")
        a = await c.post("/techniques/icon-pack/runs", json=body, headers={"Idempotency-Key": "h"})
        b = await c.post("/techniques/icon-pack/runs", json=body, headers={"Idempotency-Key": "h"})
        c2 = await c.post("/techniques/icon-pack/runs", json=body)  # body key ignored
    assert a.json()["run_id"] == b.json()["run_id"]
    assert c2.status_code == 201 and c2.json()["run_id"] != a.json()["run_id"]
    assert emu.charges_by_key() == {"h": 1}


async def test_body_carrier_ignores_the_header(emu: Emulator, client: httpx.AsyncClient) -> None:
    """Default carrier: the header alone dedupes nothing (as measured on technique runs)."""
    body = run_body(key=None)
    for _ in range(2):
        await client.post("/techniques/icon-pack/runs", json=body, headers={"Idempotency-Key": "h"})
    assert len(emu.runs) == 2


async def test_both_carriers(make_emu: Callable[..., Emulator]) -> None:
    """``both``: the body key wins, else the header key."""
    emu = make_emu(idempotency_carrier="both")
    async with client_for(emu) as c:
        a = await c.post(
            "/techniques/icon-pack/runs", json=run_body(key=None), headers={"Idempotency-Key": "h"}
        )
        b = await create(c, key="h")
    assert a.json()["run_id"] == b.json()["run_id"]


async def test_key_is_released_when_create_fails_before_the_run(
    make_emu: Callable[..., Emulator],
) -> None:
    """After a 5xx before create, a 402 or a 400, the same key creates a run normally."""
    emu = make_emu(balance=0.2, faults=FaultPlan())
    async with client_for(emu) as c:
        emu.inject("error_before_create")
        assert (await create(c, key="k")).status_code == 500
        emu.inject("unavailable_before_create")
        assert (await create(c, key="k")).status_code == 503
        bad = run_body(key="k")
        bad["mode"] = "stream"
        assert (await c.post("/techniques/icon-pack/runs", json=bad)).status_code == 400
        emu.inject("insufficient_credits")
        assert (await create(c, key="k")).status_code == 402
        assert emu.charges == []
        ok = await create(c, key="k")
    assert ok.status_code == 201
    assert emu.charges_by_key() == {"k": 1}


async def test_key_survives_a_failed_run(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """A run that later fails keeps its key burned: a repeat returns the failed run."""
    emu.inject("run_failure")
    first = (await create(client, key="k")).json()["run_id"]
    clock.advance(3600)
    again = (await create(client, key="k")).json()
    assert again["run_id"] == first and again["status"] == "failed"
    assert emu.charges_by_key() == {"k": 1}

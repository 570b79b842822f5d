"""Charging: once per created run, 402 when the balance cannot cover it, optional refunds."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from emulator_helpers import client_for, create, finish

from flora_batch.emulator import Emulator, ManualClock


async def test_each_create_is_charged_once(emu: Emulator, client: httpx.AsyncClient) -> None:
    """One charge entry per run, at the technique's cost, with its key and technique."""
    await create(client, "icon-pack", key="a")
    await create(client, "cctv-cam", key="b")
    assert [(c.idempotency_key, c.technique, c.amount, c.kind) for c in emu.charges] == [
        ("a", "icon-pack", 0.2, "charge"),
        ("b", "cctv-cam", 0.05, "charge"),
    ]
    assert emu.charges_by_key() == {"a": 1, "b": 1}
    assert emu.total_charged() == pytest.approx(0.25)
    assert all(r.charged == r.cost for r in emu.runs.values())


async def test_unkeyed_runs_are_charged_but_not_counted_by_key(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    """Two keyless creates make two runs and two charges; ``charges_by_key`` skips them."""
    await create(client, key=None)
    await create(client, key=None)
    assert len(emu.runs) == 2 and len(emu.charges) == 2
    assert emu.charges_by_key() == {}


async def test_balance_402_charges_nothing(make_emu: Callable[..., Emulator]) -> None:
    """A create the balance cannot cover is 402 ``insufficient_credits`` and costs nothing."""
    emu = make_emu(balance=0.45)
    async with client_for(emu) as c:
        assert (await create(c, key="a")).status_code == 201
        assert (await create(c, key="b")).status_code == 201
        r = await create(c, key="c")
        assert r.status_code == 402
        assert r.json() == {
            "error": {"code": "insufficient_credits", "message": "Insufficient credits."}
        }
        assert (await create(c, "cctv-cam", key="d")).status_code == 201  # 0.05 still fits
    assert emu.balance == pytest.approx(0.0)
    assert emu.charges_by_key() == {"a": 1, "b": 1, "d": 1}
    assert len(emu.runs) == 3


async def test_refund_failed_gives_the_charge_back(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """With ``refund_failed`` a failed run gets a negative charge once it has failed."""
    emu = make_emu(refund_failed=True, balance=1.0)
    emu.inject("run_failure", code="provider_error")
    async with client_for(emu) as c:
        run_id = (await create(c, key="a")).json()["run_id"]
        await create(c, key="b")
        assert emu.total_charged() == pytest.approx(0.4)  # not failed yet: no refund
        body = await finish(c, clock, run_id)
    assert body["status"] == "failed" and body["charged_cost"] == 0
    assert [c.kind for c in emu.charges] == ["charge", "charge", "refund"]
    assert emu.charges[-1].amount == pytest.approx(-0.2)
    assert emu.runs[run_id].refunded
    assert emu.total_charged() == pytest.approx(0.2)
    assert emu.balance == pytest.approx(0.8)
    assert emu.charges_by_key() == {"a": 1, "b": 1}


async def test_without_refund_failed_runs_stay_charged(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """By default a failed run keeps its charge."""
    emu.inject("run_failure")
    body = await finish(client, clock, (await create(client)).json()["run_id"])
    assert body["status"] == "failed" and body["charged_cost"] == 0.2
    assert emu.total_charged() == pytest.approx(0.2)

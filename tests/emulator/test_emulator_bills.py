"""Bills are not quotes: ``bill_factor``, ``quote`` and how they compose with ``late_charge``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from emulator_helpers import client_for, create, finish

from flora_batch.emulator import Emulator, ManualClock
from flora_batch.wire import parse_technique


async def test_bill_factor_bills_three_times_the_cost_and_the_poll_shows_it(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """``bill_factor=3``: the charge and the poll's ``charged_cost`` are 3 × 0.20; the create
    still quotes 0.20."""
    emu = make_emu(bill_factor=3)
    async with client_for(emu) as c:
        created = await create(c, key="a")
        body = await finish(c, clock, created.json()["run_id"])
    assert created.json()["charged_cost"] == pytest.approx(0.2)
    assert body["charged_cost"] == pytest.approx(0.6)
    assert [ch.amount for ch in emu.charges] == [pytest.approx(0.6)]
    assert emu.total_charged() == pytest.approx(0.6) == emu.our_total_charged()
    assert emu.charges_by_key() == {"a": 1}


async def test_balance_is_checked_against_the_bill(make_emu: Callable[..., Emulator]) -> None:
    """A balance that covers the quote but not the bill is 402 and charges nothing."""
    emu = make_emu(bill_factor=2, balance=0.3)
    async with client_for(emu) as c:
        r = await create(c, key="a")
    assert r.status_code == 402 and emu.charges == []


async def test_refund_gives_back_the_bill(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """With ``refund_failed`` a failed run's refund is the whole bill, not the quote."""
    emu = make_emu(bill_factor=1.5, refund_failed=True)
    emu.inject("run_failure")
    async with client_for(emu) as c:
        body = await finish(c, clock, (await create(c, key="a")).json()["run_id"])
    assert body["charged_cost"] == 0
    assert [ch.amount for ch in emu.charges] == [pytest.approx(0.3), pytest.approx(-0.3)]
    assert emu.total_charged() == 0


async def test_late_charge_hides_the_bill_then_shows_it(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """With ``late_charge`` and ``bill_factor`` the terminal run first has no ``charged_cost``,
    then the bill (not the quote)."""
    emu = make_emu(bill_factor=2, late_charge=30)
    async with client_for(emu) as c:
        run_id = (await create(c, key="a")).json()["run_id"]
        clock.advance(emu.runs[run_id].ended_at - clock.time)
        done = (await c.get(f"/runs/{run_id}")).json()
        clock.advance(30)
        later = (await c.get(f"/runs/{run_id}")).json()
    assert done["status"] == "completed" and "charged_cost" not in done
    assert later["charged_cost"] == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("quote", "shown"), [("exact", 0.2), ("zero", 0.0), ("missing", None)]
)
async def test_quote_sets_what_the_technique_lookup_shows(
    make_emu: Callable[..., Emulator], clock: ManualClock, quote: str, shown: float | None
) -> None:
    """``quote`` shows the real cost, 0 or no ``run_cost`` (lookup, list and the create's
    ``charged_cost``); the run is billed the real cost regardless."""
    emu = make_emu(quote=quote)
    async with client_for(emu) as c:
        one = (await c.get("/techniques/icon-pack")).json()
        listed = (await c.get("/techniques", params={"limit": 100})).json()["techniques"]
        created = (await create(c, key="a")).json()
        body = await finish(c, clock, created["run_id"])
    item = next(t for t in listed if t["technique_id"] == "tech_icon-pack")
    assert one.get("run_cost") == shown == item.get("run_cost") == created.get("charged_cost")
    assert ("run_cost" in one) is (shown is not None)
    assert body["charged_cost"] == pytest.approx(0.2)
    assert emu.total_charged() == pytest.approx(0.2)


async def test_missing_quote_in_the_camel_dialect(make_emu: Callable[..., Emulator]) -> None:
    """``quote="missing"`` leaves out ``runCost`` in the older dialect too."""
    emu = make_emu(quote="missing", dialect="camel")
    async with client_for(emu) as c:
        body = (await c.get("/techniques/icon-pack")).json()
    assert "runCost" not in body and body["techniqueId"] == "tech_icon-pack"


async def test_client_parser_reads_a_missing_quote_as_zero(
    make_emu: Callable[..., Emulator],
) -> None:
    """flora-batch's ``parse_technique`` takes a technique without ``run_cost`` as costing 0."""
    emu = make_emu(quote="missing")
    async with client_for(emu) as c:
        body = (await c.get("/techniques/icon-pack")).json()
    technique = parse_technique(body, "icon-pack")
    assert technique.run_cost == 0.0 and technique.slug == "icon-pack"


async def test_a_replay_shows_the_bill_not_the_quote(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """A replayed create is the existing run's state, so it carries the bill."""
    emu = make_emu(bill_factor=2)
    async with client_for(emu) as c:
        first = (await create(c, key="a")).json()
        again = (await create(c, key="a")).json()
    assert first["charged_cost"] == pytest.approx(0.2)
    assert again["charged_cost"] == pytest.approx(0.4)

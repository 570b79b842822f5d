"""Same-key creates that overlap (``create_latency``, ``merge_concurrent_creates``), the key
window on real and manual clocks, and 4xx answers to a repeated key (``duplicate_status``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from emulator_helpers import client_for, create, run_body

from flora_batch.emulator import Emulator, EmulatorConfig, ManualClock


async def _two_overlapping(emu: Emulator, key: str = "k") -> list[httpx.Response]:
    async with client_for(emu) as c:
        return list(await asyncio.gather(create(c, key=key), create(c, key=key)))


async def test_unmerged_overlapping_creates_make_two_runs_and_two_charges(
    make_emu: Callable[..., Emulator],
) -> None:
    """``merge_concurrent_creates=False``: both overlapping same-key creates run and bill."""
    emu = make_emu(create_latency=0.2, merge_concurrent_creates=False)
    first, second = await _two_overlapping(emu)
    assert first.status_code == second.status_code == 201
    assert first.json()["run_id"] != second.json()["run_id"]
    assert len(emu.runs) == 2 and emu.charges_by_key() == {"k": 2}


async def test_merged_overlapping_creates_make_one_run(make_emu: Callable[..., Emulator]) -> None:
    """By default the second waits for the first and is replayed: one run, one charge."""
    emu = make_emu(create_latency=0.2)
    first, second = await _two_overlapping(emu)
    assert sorted([first.status_code, second.status_code]) == [200, 201]
    assert first.json()["run_id"] == second.json()["run_id"]
    assert len(emu.runs) == 1 and emu.charges_by_key() == {"k": 1}


async def test_merged_overlap_in_conflict_mode_is_a_409(make_emu: Callable[..., Emulator]) -> None:
    """Merged, the waiting create gets the normal duplicate answer: 409 in ``conflict`` mode."""
    emu = make_emu(create_latency=0.1, idempotency="conflict")
    statuses = sorted(r.status_code for r in await _two_overlapping(emu))
    assert statuses == [201, 409] and emu.charges_by_key() == {"k": 1}


async def test_a_waiting_create_books_if_the_first_fails(make_emu: Callable[..., Emulator]) -> None:
    """If the first same-key create ends in a 402 at booking, the one that waited creates."""
    emu = make_emu(create_latency=0.2, balance=0.0)

    async def top_up() -> None:
        await asyncio.sleep(0.3)  # after the first booked (0.2 s), before the second (0.4 s)
        emu.balance = 1.0

    async with client_for(emu) as c:
        first, second, _ = await asyncio.gather(create(c, key="k"), create(c, key="k"), top_up())
    assert (first.status_code, second.status_code) == (402, 201)
    assert emu.charges_by_key() == {"k": 1}


async def test_latency_keeps_created_at_at_arrival_and_binds_the_key_at_booking(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """``created_at`` is when the create arrived; the key window counts from the booking."""
    emu = make_emu(create_latency=0.1, key_window=100)
    arrived = clock.time

    async def later() -> None:
        await asyncio.sleep(0.03)
        clock.advance(50)  # the clock moves while the create sits in its latency

    async with client_for(emu) as c:
        created, _ = await asyncio.gather(create(c, key="k"), later())
        run = emu.runs[created.json()["run_id"]]
        assert run.created_at == arrived and created.json()["created_at"] == arrived * 1000
        assert [ch.at for ch in emu.charges] == [arrived + 50]
        clock.advance(99)  # 149 s after arrival, 99 s after booking: still the same run
        assert (await create(c, key="k")).json()["run_id"] == run.run_id
        clock.advance(1)
        assert (await create(c, key="k")).json()["run_id"] != run.run_id
    assert emu.charges_by_key() == {"k": 2}


async def test_key_window_on_the_real_clock() -> None:
    """With the real clock a key is replayed inside ``key_window`` and forgotten after it."""
    emu = Emulator(EmulatorConfig(key_window=0.3))
    async with client_for(emu) as c:
        first = (await create(c, key="k")).json()["run_id"]
        assert (await create(c, key="k")).json()["run_id"] == first
        await asyncio.sleep(0.35)
        again = await create(c, key="k")
    assert again.status_code == 201 and again.json()["run_id"] != first
    assert emu.charges_by_key() == {"k": 2}


async def test_key_window_counts_from_booking_on_the_real_clock() -> None:
    """Real clock and ``create_latency``: the key lives ``key_window`` from the booking."""
    emu = Emulator(EmulatorConfig(key_window=0.3, create_latency=0.2))
    async with client_for(emu) as c:
        started = time.time()
        first = (await create(c, key="k")).json()["run_id"]
        booked = emu.charges[0].at
        assert booked - started >= 0.19 and emu.runs[first].created_at < booked
        await asyncio.sleep(max(0.0, booked + 0.1 - time.time()))
        # arrives 0.1 s after booking and is looked up at once: inside the window
        assert (await create(c, key="k")).json()["run_id"] == first
    assert emu.charges_by_key() == {"k": 1}


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "input_validation_error"), (404, "not_found"), (422, "idempotency_conflict")],
)
async def test_duplicate_status_answers_a_repeated_key_without_charging(
    make_emu: Callable[..., Emulator], status: int, code: str
) -> None:
    """``duplicate_status``: a same-key retry after a create that landed gets that 4xx in the
    contract's envelope; nothing is created or charged."""
    emu = make_emu(duplicate_status=status)
    async with client_for(emu) as c:
        first = await create(c, key="k")
        again = await create(c, key="k")
        other = await create(c, key="other")
    assert first.status_code == 201 and other.status_code == 201
    assert again.status_code == status
    error = again.json()["error"]
    assert error["code"] == code and error["message"]
    assert set(again.json()) == {"error"} and "run_id" not in str(again.json())
    if status == 400:
        assert error["fields"] == [
            {"field": "idempotency_key", "message": "Idempotency key has already been used"}
        ]
    assert len(emu.runs) == 2 and emu.charges_by_key() == {"k": 1, "other": 1}


async def test_duplicate_status_404_after_the_window_creates_again(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """Past ``key_window`` the key is free again: a new run, not a 404."""
    emu = make_emu(duplicate_status=404, key_window=60)
    async with client_for(emu) as c:
        await create(c, key="k")
        assert (await create(c, key="k")).status_code == 404
        clock.advance(60)
        assert (await create(c, key="k")).status_code == 201
    assert emu.charges_by_key() == {"k": 2}


async def test_duplicate_status_also_answers_a_merged_overlap(
    make_emu: Callable[..., Emulator],
) -> None:
    """The create that waited for a same-key one gets ``duplicate_status`` too."""
    emu = make_emu(create_latency=0.1, duplicate_status=422)
    statuses = sorted(r.status_code for r in await _two_overlapping(emu))
    assert statuses == [201, 422] and emu.charges_by_key() == {"k": 1}


async def test_duplicate_status_400_names_the_header_that_carried_the_key(
    make_emu: Callable[..., Emulator],
) -> None:
    """With ``idempotency_carrier="header"`` the 400's field is ``Idempotency-Key``."""
    emu = make_emu(duplicate_status=400, idempotency_carrier="header")
    headers = {"Idempotency-Key": "h"}
    async with client_for(emu) as c:
        for _ in range(2):
            r = await c.post("/techniques/icon-pack/runs", json=run_body(key=None), headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["fields"][0]["field"] == "Idempotency-Key"
    assert emu.charges_by_key() == {"h": 1}

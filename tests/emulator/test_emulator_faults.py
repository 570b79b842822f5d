"""Every fault kind, forced and by probability, and seeded replay of a fault plan."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from emulator_helpers import client_for, create, finish

from flora_batch.emulator import Emulator, FaultKind, FaultPlan, ManualClock


def _always(kind: str, **extra: object) -> FaultPlan:
    return FaultPlan(**{kind: 1.0}, **extra)  # type: ignore[arg-type]


async def test_rate_limit_with_retry_after(make_emu: Callable[..., Emulator]) -> None:
    """429 ``rate_limited`` with ``retry-after`` seconds (and ``retry-after-ms`` if asked)."""
    emu = make_emu(faults=_always("rate_limit", retry_after=2.5, retry_after_ms=True))
    async with client_for(emu) as c:
        r = await c.get("/techniques")
        r2 = await create(c)
    assert r.status_code == 429 and r2.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert r.headers["retry-after"] == "2.5" and r.headers["retry-after-ms"] == "2500"
    assert emu.runs == {} and emu.charges == []


@pytest.mark.parametrize(
    "plan",
    [_always("rate_limit", retry_after=None), _always("rate_limit", retry_after_missing=1.0)],
)
async def test_rate_limit_without_retry_after(
    make_emu: Callable[..., Emulator], plan: FaultPlan
) -> None:
    """A 429 may come with no retry header at all."""
    async with client_for(make_emu(faults=plan)) as c:
        r = await c.get("/techniques")
    assert r.status_code == 429
    assert "retry-after" not in r.headers and "retry-after-ms" not in r.headers


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("error_before_create", 500, "unknown_error"),
        ("unavailable_before_create", 503, "service_unavailable"),
    ],
)
async def test_errors_before_create_make_no_run(
    make_emu: Callable[..., Emulator], kind: str, status: int, code: str
) -> None:
    """5xx before the run exists: no run, no charge."""
    emu = make_emu(faults=_always(kind))
    async with client_for(emu) as c:
        r = await create(c)
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert emu.runs == {} and emu.charges == []


async def test_error_after_create_still_charges(emu: Emulator, client: httpx.AsyncClient) -> None:
    """500 after the run was created and charged; a retry with the key replays that run."""
    emu.inject(FaultKind.ERROR_AFTER_CREATE)
    r = await create(client, key="k")
    assert r.status_code == 500 and r.json()["error"]["code"] == "unknown_error"
    assert len(emu.runs) == 1 and emu.charges_by_key() == {"k": 1}
    retry = await create(client, key="k")
    assert retry.status_code == 200 and retry.json()["run_id"] in emu.runs
    assert emu.charges_by_key() == {"k": 1}


async def test_drop_after_create_breaks_the_connection(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    """The client sees httpx.RemoteProtocolError, though the run was created and charged."""
    emu.inject("drop_after_create")
    with pytest.raises(httpx.RemoteProtocolError):
        await create(client, key="k")
    assert len(emu.runs) == 1 and emu.charges_by_key() == {"k": 1}
    assert (await create(client, key="k")).status_code == 200
    assert emu.charges_by_key() == {"k": 1}


async def test_drop_without_raising_app_exceptions_gives_half_a_body(emu: Emulator) -> None:
    """With ``raise_app_exceptions=False`` the client gets a truncated, unparseable body."""
    emu.inject("drop_after_create")
    async with client_for(emu, raise_app_exceptions=False) as c:
        r = await create(c)
    assert int(r.headers["content-length"]) > len(r.content)
    with pytest.raises(ValueError):
        r.json()


async def test_poll_errors(make_emu: Callable[..., Emulator]) -> None:
    """Run reads fail with 500 ``unknown_error`` or 503 ``service_unavailable``; creates don't."""
    emu = make_emu(faults=_always("poll_error"))
    async with client_for(emu) as c:
        run_id = (await create(c)).json()["run_id"]
        codes = {(await c.get(f"/runs/{run_id}")).json()["error"]["code"] for _ in range(20)}
        nested = await c.get(f"/techniques/icon-pack/runs/{run_id}")
    assert codes == {"unknown_error", "service_unavailable"}
    assert nested.status_code in (500, 503)


async def test_bad_gateway_is_not_json(make_emu: Callable[..., Emulator]) -> None:
    """A 502 with an HTML body, as a gateway would send."""
    async with client_for(make_emu(faults=_always("bad_gateway"))) as c:
        r = await c.get("/techniques")
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")
    assert r.headers["request-id"].startswith("req_")


async def test_slow_responses_sleep(make_emu: Callable[..., Emulator]) -> None:
    """``slow`` delays a response by ``slow_seconds`` (a real async sleep)."""
    async with client_for(make_emu(faults=_always("slow", slow_seconds=0.2))) as c:
        start = time.perf_counter()
        r = await c.get("/techniques")
    assert r.status_code == 200 and time.perf_counter() - start >= 0.2


async def test_truncated_media(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """A truncated download breaks the connection; the next one is whole and recorded."""
    run_id = (await create(client, "cctv-cam")).json()["run_id"]
    url = (await finish(client, clock, run_id))["outputs"][0]["url"]
    emu.inject("truncate_media")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(url)
    assert emu.served_media == {}
    assert (await client.get(url)).status_code == 200
    assert (run_id, "output_1") in emu.served_media


async def test_expired_media_fault(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """``expire_media`` answers 403 even without a TTL."""
    run_id = (await create(client, "cctv-cam")).json()["run_id"]
    url = (await finish(client, clock, run_id))["outputs"][0]["url"]
    emu.inject("expire_media")
    assert (await client.get(url)).status_code == 403
    assert (await client.get(url)).status_code == 200


async def test_insufficient_after(make_emu: Callable[..., Emulator]) -> None:
    """``insufficient_after=N``: 402 from the (N+1)-th run on, as when a balance runs out."""
    emu = make_emu(faults=FaultPlan(insufficient_after=2))
    async with client_for(emu) as c:
        statuses = [(await create(c, key=f"k{n}")).status_code for n in range(4)]
    assert statuses == [201, 201, 402, 402]
    assert len(emu.charges) == 2


async def test_run_failures_use_the_configured_codes(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """``run_failure`` fails that share of runs with codes from ``failure_codes``."""
    plan = FaultPlan(
        seed=3, run_failure=0.5, failure_codes=("GPU_PROVIDER_ERROR", "safety_blocked")
    )
    emu = make_emu(faults=plan)
    async with client_for(emu) as c:
        ids = [(await create(c, key=f"k{n}")).json()["run_id"] for n in range(40)]
        clock.advance(3600)
        bodies = [(await c.get(f"/runs/{i}")).json() for i in ids]
    failed = [b for b in bodies if b["status"] == "failed"]
    assert 10 <= len(failed) <= 30
    assert {b["error_code"] for b in failed} == {"GPU_PROVIDER_ERROR", "safety_blocked"}
    assert all(b["status"] == "completed" for b in bodies if b not in failed)


async def _trace(
    make_emu: Callable[..., Emulator], clock: ManualClock, plan: FaultPlan
) -> list[object]:
    """The observable outcome of a fixed request sequence under ``plan``."""
    emu = make_emu(faults=plan)
    trace: list[object] = []
    async with client_for(emu) as c:
        for n in range(30):
            try:
                r = await create(c, key=f"k{n}")
                trace.append(r.status_code)
            except httpx.RemoteProtocolError:
                trace.append("drop")
        clock.advance(3600)
        for run in sorted(emu.runs.values(), key=lambda r: r.seq):
            body = (await c.get(f"/runs/{run.run_id}")).json()
            trace.append((run.idempotency_key, body.get("status"), body.get("error_code")))
    return trace


async def test_seeded_plans_replay_exactly(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """The same seed and request sequence give the same faults and fates; another seed differs."""
    plan = FaultPlan.parse(
        "seed=7,rate_limit=0.1,error_before_create=0.05,error_after_create=0.05,"
        "drop_after_create=0.05,poll_error=0.05,run_failure=0.2"
    )
    first = await _trace(make_emu, clock, plan)
    again = await _trace(make_emu, clock, plan)
    other = await _trace(
        make_emu, clock, FaultPlan.parse(plan.to_string().replace("seed=7", "seed=8"))
    )
    assert first == again
    assert first != other
    assert {"drop", 429, 500} & set(first[:30])


def test_fault_plan_parses_the_command_line_spelling() -> None:
    """Compact ``name=value`` pairs, ``|`` lists, ``none``, booleans; round trip via to_string."""
    plan = FaultPlan.parse(
        "seed=7, rate_limit=0.1, retry_after=none, retry_after_ms=true, truncate_media=0.05,"
        "insufficient_after=3, failure_codes=provider_error|model_timeout, slow-seconds=0.5"
    )
    assert plan.seed == 7 and plan.rate_limit == 0.1 and plan.retry_after is None
    assert plan.retry_after_ms is True and plan.insufficient_after == 3
    assert plan.failure_codes == ("provider_error", "model_timeout") and plan.slow_seconds == 0.5
    assert FaultPlan.parse(plan.to_string()) == plan
    assert FaultPlan.parse("") == FaultPlan()


@pytest.mark.parametrize(
    "text", ["nonsense=1", "rate_limit", "rate_limit=2", "seed=x", "retry_after_ms=maybe"]
)
def test_fault_plan_rejects_bad_spellings(text: str) -> None:
    """Unknown names, missing values and out-of-range probabilities are errors."""
    with pytest.raises(ValueError):
        FaultPlan.parse(text)


async def test_media_route_has_no_api_faults(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """Rate limits apply to the API, not to the media host."""
    emu = make_emu()
    async with client_for(emu) as c:
        run_id = (await create(c, "cctv-cam")).json()["run_id"]
        url = (await finish(c, clock, run_id))["outputs"][0]["url"]
    emu.dice.plan = _always("rate_limit")
    async with client_for(emu) as c:
        assert (await c.get(url)).status_code == 200
        assert (await c.get("/techniques")).status_code == 429

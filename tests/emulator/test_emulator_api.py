"""Auth, request ids, the error envelope and the catalog routes."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from emulator_helpers import client_for, create

from flora_batch.emulator import Emulator

CATALOG_SIZE = 41  # the seed document's 38 techniques and the emulator's 3 extras

REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")


async def test_missing_authorization_is_unauthorized(emu: Emulator) -> None:
    """No Authorization header: 401 ``unauthorized`` in the envelope."""
    async with client_for(emu, auth=False) as c:
        r = await c.get("/techniques/cctv-cam")
    assert r.status_code == 401
    assert r.json() == {"error": {"code": "unauthorized", "message": "Invalid API key."}}


@pytest.mark.parametrize("header", ["Bearer sk_live_wrong", "Basic sk_test_emulator", "Bearer"])
async def test_wrong_key_is_invalid_api_key(emu: Emulator, header: str) -> None:
    """A wrong key or scheme: 401 ``invalid_api_key``."""
    async with client_for(emu, auth=False) as c:
        r = await c.get("/techniques", headers={"Authorization": header})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


async def test_custom_api_key(make_emu: Callable[..., Emulator]) -> None:
    """The accepted key is configurable."""
    emu = make_emu(api_key="sk_test_other")
    async with client_for(emu, auth=False) as c:
        ok = await c.get("/techniques", headers={"Authorization": "Bearer sk_test_other"})
        bad = await c.get("/techniques", headers={"Authorization": "Bearer sk_test_emulator"})
    assert (ok.status_code, bad.status_code) == (200, 401)


async def test_every_response_has_a_request_id(emu: Emulator, client: httpx.AsyncClient) -> None:
    """Successes, errors, unknown paths and the admin route all carry ``request-id: req_…``."""
    responses = [
        await client.get("/techniques"),
        await client.get("/techniques/nope"),
        await client.get("/no/such/route"),
        await client.post("/techniques/icon-pack/runs", content=b"{"),
        await client.get("http://testserver/_emulator/state"),
    ]
    async with client_for(emu, auth=False) as anonymous:
        responses.append(await anonymous.get("/techniques"))
    ids = [r.headers["request-id"] for r in responses]
    assert all(REQUEST_ID.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids)


async def test_get_technique_by_slug_or_id(client: httpx.AsyncClient) -> None:
    """``GET /techniques/{slug}`` accepts the slug and the ``tech_`` id."""
    by_slug = (await client.get("/techniques/quick-reframe")).json()
    by_id = (await client.get("/techniques/tech_quick-reframe")).json()
    assert by_slug == by_id
    assert by_slug["technique_id"] == "tech_quick-reframe"
    assert by_slug["name"] == "Layout Resizer"
    assert by_slug["run_cost"] == 0.04
    assert [i["id"] for i in by_slug["inputs"]] == ["layout", "aspect_ratio"]
    assert "pattern" not in by_slug["inputs"][1]  # emulator-only keys stay home


async def test_optional_flag_only_on_optional_inputs(client: httpx.AsyncClient) -> None:
    """``optional: true`` marks optional slots; required slots have no ``optional`` key."""
    inputs = (await client.get("/techniques/icon-pack")).json()["inputs"]
    assert inputs[0]["id"] == "prompt" and "optional" not in inputs[0]
    assert inputs[1]["id"] == "style" and inputs[1]["optional"] is True


async def test_unknown_technique_and_run_are_not_found(client: httpx.AsyncClient) -> None:
    """Unknown slug, unknown run, run under the wrong technique: 404 ``not_found``."""
    run_id = (await create(client)).json()["run_id"]
    for path in (
        "/techniques/nope",
        "/techniques/nope/runs/run_x",
        "/runs/run_doesnotexist",
        f"/techniques/cctv-cam/runs/{run_id}",
        "/no/such/route",
    ):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found", path
    assert (await client.post("/techniques/nope/runs", json={})).status_code == 404


async def test_list_techniques_pages_with_a_cursor(client: httpx.AsyncClient) -> None:
    """Pages of ``limit``, ``meta.next_cursor`` until null, ``total_estimate`` all 41."""
    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 10}
    while True:
        body = (await client.get("/techniques", params=params)).json()
        seen += [t["technique_id"] for t in body["techniques"]]
        assert body["meta"]["total_estimate"] == CATALOG_SIZE
        if body["meta"]["next_cursor"] is None:
            break
        params["cursor"] = body["meta"]["next_cursor"]
    assert len(seen) == CATALOG_SIZE == len(set(seen))
    assert seen[0] == "tech_art-directors-critique"


async def test_list_techniques_default_and_max_limit(client: httpx.AsyncClient) -> None:
    """Default page is 20; ``limit=100`` returns everything with a null cursor."""
    first = (await client.get("/techniques")).json()
    assert len(first["techniques"]) == 20
    everything = (await client.get("/techniques", params={"limit": 100})).json()
    assert len(everything["techniques"]) == CATALOG_SIZE
    assert everything["meta"]["next_cursor"] is None


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"cursor": "!!"}]
)
async def test_bad_paging_parameters_are_400(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    """``limit`` outside 1..100 and foreign cursors are validation errors with ``fields``."""
    r = await client.get("/techniques", params=params)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "input_validation_error"
    assert error["fields"][0]["field"] in params


async def test_list_techniques_query(client: httpx.AsyncClient) -> None:
    """``query`` searches slug, name and description."""
    body = (await client.get("/techniques", params={"query": "animate"})).json()
    slugs = {t["technique_id"] for t in body["techniques"]}
    assert slugs == {
        "tech_product-animator",
        "tech_product-motion",
        "tech_seamless-transition",
        "tech_sigil",
    }
    assert body["meta"]["total_estimate"] == 4


async def test_wrong_method_is_an_envelope(client: httpx.AsyncClient) -> None:
    """Router errors use the envelope too."""
    r = await client.delete("http://testserver/_emulator/state")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"

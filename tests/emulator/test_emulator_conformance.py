"""Every snake_case response the emulator gives, checked against FLORA's OpenAPI files.

The response schemas are taken from the YAML files in ``../shared/flora-api/`` and
resolved with ``referencing`` (so any ``$ref`` into the document works).  They are made
*strict* before use: every object schema that lists ``properties`` also gets
``additionalProperties: false`` unless it says otherwise, so an extra or misspelt key is
a failure, not a pass.  Deviations the contract documents are the only ones allowed:

* technique slots may carry ``optional: true`` (CONTRACT.md §1: TS/Go SDK field);
* ``/technique-runs`` is not in the split files: its items are the run schema plus the
  fields CONTRACT.md §2 lists;
* 503 ``service_unavailable`` is not declared: it is checked against the 500 schema with
  that one code added to the enum (CONTRACT.md §5 lists it from the docs);
* ``format: uri`` is not asserted, because a ``text`` output carries its text in ``url``
  (CONTRACT.md §4); real URLs are checked by hand instead.

Assets (``flora-fauna-assets-api-openapi.yml``, 1.6.0, which ASSETS.md says is *behind*
the SDK on this resource) allow exactly these deviations:

* ``uploaded_via: "direct"`` in the create answer (ASSETS.md §1-2: direct multipart
  uploads exist only in the TS SDK ≥ 0.9.0 and its server change, not in the spec's enum);
* 409 ``conflict`` for an invalid lifecycle transition (ASSETS.md §4, §10: a docs-only
  code, not in the spec's enum), checked against the 409 schema with that code added;
* a create replayed for its ``Idempotency-Key`` (``replay`` mode) answers 200 with the
  201 body (the spec declares only 201; ASSETS.md §2 says to accept any 2xx, and §9 that
  FLORA itself answers 409 instead, which ``idempotency="conflict"`` reproduces).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from emulator_helpers import (
    client_for,
    create,
    create_asset,
    png_bytes,
    run_body,
    send_to_storage,
    upload_direct,
)
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from flora_batch.emulator import Emulator, FaultPlan, ManualClock, load_catalog

SPEC_DIR = Path(__file__).parents[2].parent / "shared" / "flora-api"
FILES = {
    "techniques": "flora-fauna-techniques-api-openapi.yml",
    "technique-runs": "flora-fauna-technique-runs-api-openapi.yml",
    "runs": "flora-fauna-runs-api-openapi.yml",
    "assets": "flora-fauna-assets-api-openapi.yml",
}
pytestmark = pytest.mark.skipif(
    not SPEC_DIR.is_dir(), reason=f"FLORA OpenAPI files not found at {SPEC_DIR} (shared/ absent)"
)

LIST_TECHNIQUES = ("techniques", "/techniques", "get")
GET_TECHNIQUE = ("techniques", "/techniques/{techniqueId}", "get")
CREATE_RUN = ("technique-runs", "/techniques/{techniqueId}/runs", "post")
POLL_RUN = ("technique-runs", "/techniques/{techniqueId}/runs/{runId}", "get")
GET_RUN = ("runs", "/runs/{runId}", "get")
CREATE_ASSET = ("assets", "/assets", "post")
LIST_ASSETS = ("assets", "/assets", "get")
GET_ASSET = ("assets", "/assets/{assetId}", "get")
COMPLETE_ASSET = ("assets", "/assets/{assetId}/complete", "post")
RETRY_ASSET = ("assets", "/assets/{assetId}/retry", "post")
Operation = tuple[str, str, str]


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class Spec:
    """The three OpenAPI documents, and strict validators for their response schemas."""

    def __init__(self) -> None:
        self.docs = {k: yaml.safe_load((SPEC_DIR / f).read_text()) for k, f in FILES.items()}
        registry: Registry[Any] = Registry()
        for name, doc in self.docs.items():
            resource = Resource.from_contents(doc, default_specification=DRAFT202012)
            registry = registry.with_resource(f"urn:flora:{name}", resource)
        self.registry = registry

    def schema(self, op: Operation, status: int) -> dict[str, Any]:
        """The resolved response schema of one operation and status."""
        name, path, method = op
        responses = self.docs[name]["paths"][path][method]["responses"]
        assert str(status) in responses, f"{method.upper()} {path} declares no {status}"
        ref = f"urn:flora:{name}#/" + _pointer("paths", path, method, "responses", str(status))
        resolved = self.registry.resolver().lookup(ref).contents
        return copy.deepcopy(resolved["content"]["application/json"]["schema"])

    def validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        """A validator for ``schema`` made strict, resolving refs in the spec documents."""
        return Draft202012Validator(strict(schema), registry=self.registry)


def strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists properties."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _allow_optional_flag(technique_schema: dict[str, Any]) -> None:
    for side in ("inputs", "outputs"):
        slot = technique_schema["properties"][side]["items"]
        slot["properties"]["optional"] = {"type": "boolean", "const": True}


@pytest.fixture(scope="module")
def spec() -> Spec:
    """The parsed OpenAPI files."""
    return Spec()


def _check(validator: Draft202012Validator, body: Any, what: str) -> None:
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{what}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def _check_urls(run: dict[str, Any]) -> None:
    """What ``format: uri`` would have checked, for the fields that really are URLs."""
    assert run["poll_url"].startswith("http://testserver/api/v1/")
    for output in run.get("outputs", []):
        if output["type"] != "text":
            assert output["url"].startswith("http://testserver/_media/")


async def test_technique_responses_conform(spec: Spec, client: httpx.AsyncClient) -> None:
    """``GET /techniques`` (every page) and ``GET /techniques/{slug}`` for all 38."""
    item_schema = spec.schema(GET_TECHNIQUE, 200)
    _allow_optional_flag(item_schema)
    one = spec.validator(item_schema)
    list_schema = spec.schema(LIST_TECHNIQUES, 200)
    _allow_optional_flag(list_schema["properties"]["techniques"]["items"])
    many = spec.validator(list_schema)
    params: dict[str, Any] = {"limit": 7}
    while True:
        body = (await client.get("/techniques", params=params)).json()
        _check(many, body, "list techniques")
        if not body["meta"]["next_cursor"]:
            break
        params["cursor"] = body["meta"]["next_cursor"]
    for technique in load_catalog().techniques:
        _check(one, (await client.get(f"/techniques/{technique.slug}")).json(), technique.slug)


def _run_validators(spec: Spec) -> dict[str, Draft202012Validator]:
    return {
        "create201": spec.validator(spec.schema(CREATE_RUN, 201)),
        "create200": spec.validator(spec.schema(CREATE_RUN, 200)),
        "poll": spec.validator(spec.schema(POLL_RUN, 200)),
        "get": spec.validator(spec.schema(GET_RUN, 200)),
    }


async def test_run_responses_conform_in_every_state(
    spec: Spec, make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """Create (201, replayed 200) and both poll routes: pending, running, completed, failed."""
    check = _run_validators(spec)
    emu = make_emu(refund_failed=True)
    async with client_for(emu) as c:
        ok = await create(c, "icon-pack", key="ok")
        emu.inject("run_failure", code="provider_error")
        bad = await create(c, "palette-pull", key="bad")
        _check(check["create201"], ok.json(), "create")
        _check(check["create200"], (await create(c, key="ok")).json(), "replayed create")
        runs = [(ok.json()["run_id"], "icon-pack"), (bad.json()["run_id"], "palette-pull")]
        seen = set()
        for _ in range(40):
            for run_id, slug in runs:
                nested = (await c.get(f"/techniques/{slug}/runs/{run_id}")).json()
                flat = (await c.get(f"/runs/{run_id}")).json()
                _check(check["poll"], nested, f"poll {nested['status']}")
                _check(check["get"], flat, f"get {flat['status']}")
                _check_urls(nested)
                seen.add(nested["status"])
            clock.advance(2)
    assert seen == {"pending", "running", "completed", "failed"}


async def test_create_200_dialect_conforms(spec: Spec, make_emu: Callable[..., Emulator]) -> None:
    """``create_status=200`` answers match the spec's 200 schema."""
    async with client_for(make_emu(create_status=200)) as c:
        r = await create(c, "seamless-transition")
    assert r.status_code == 200
    _check(_run_validators(spec)["create200"], r.json(), "create 200")


def _technique_runs_schema(spec: Spec) -> dict[str, Any]:
    """The ``/technique-runs`` page: the run schema plus CONTRACT.md §2's extra fields."""
    item = spec.schema(GET_RUN, 200)
    technique = spec.schema(GET_TECHNIQUE, 200)["properties"]
    item["properties"].update(
        technique_run_id=item["properties"]["run_id"],
        project_id={"type": "string", "pattern": r"^prj_\S+$"},
        workspace_id={"type": "string", "pattern": r"^ws_\S+$"},
        technique={
            "type": "object",
            "properties": {"technique_id": technique["technique_id"], "name": technique["name"]},
            "required": ["technique_id", "name"],
        },
    )
    item["required"] = [
        *item["required"],
        "technique_run_id",
        "project_id",
        "workspace_id",
        "technique",
    ]
    meta = spec.schema(LIST_TECHNIQUES, 200)["properties"]["meta"]
    return {
        "type": "object",
        "properties": {"technique_runs": {"type": "array", "items": item}, "meta": meta},
        "required": ["technique_runs", "meta"],
    }


async def test_technique_runs_list_conforms(
    spec: Spec, emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Run history pages: run objects plus the history fields, and the list meta."""
    validator = spec.validator(_technique_runs_schema(spec))
    emu.inject("run_failure")
    for n in range(5):
        await create(client, "cctv-cam", key=f"k{n}")
    for _ in range(3):
        params: dict[str, Any] = {"limit": 2}
        while True:
            body = (await client.get("/technique-runs", params=params)).json()
            _check(validator, body, "technique-runs")
            if not body["meta"]["next_cursor"]:
                break
            params["cursor"] = body["meta"]["next_cursor"]
        clock.advance(15)


async def _error_cases(make_emu: Callable[..., Emulator]) -> list[tuple[Operation, httpx.Response]]:
    """One response for each error the emulator gives on the spec's routes."""
    cases: list[tuple[Operation, httpx.Response]] = []
    emu = make_emu(balance=0.1, idempotency="conflict")
    async with client_for(emu, auth=False) as c:
        cases.append((GET_TECHNIQUE, await c.get("/techniques/cctv-cam")))
        cases.append(
            (LIST_TECHNIQUES, await c.get("/techniques", headers={"Authorization": "Bearer nope"}))
        )
    async with client_for(emu) as c:
        post = "/techniques/cctv-cam/runs"
        cases.append((CREATE_RUN, await c.post(post, content=b"{]")))
        cases.append((CREATE_RUN, await c.post(post, json={"inputs": [], "mode": "stream"})))
        cases.append((LIST_TECHNIQUES, await c.get("/techniques", params={"limit": 500})))
        cases.append((GET_TECHNIQUE, await c.get("/techniques/nope")))
        cases.append((GET_RUN, await c.get("/runs/run_nope")))
        cases.append((POLL_RUN, await c.get("/techniques/cctv-cam/runs/run_nope")))
        await create(c, "cctv-cam", key="k")
        cases.append((CREATE_RUN, await create(c, "cctv-cam", key="k")))  # 409
        cases.append((CREATE_RUN, await create(c, "icon-pack", key="k2")))  # 402
        for kind in ("rate_limit", "error_before_create", "error_after_create"):
            emu.inject(kind)
            cases.append((CREATE_RUN, await c.post(post, json=run_body("cctv-cam", key=kind))))
    return cases


async def test_error_responses_conform(spec: Spec, make_emu: Callable[..., Emulator]) -> None:
    """401 ×2, 400 ×3, 404 ×3, 409, 402, 429 and 500 match the declared error schemas."""
    cases = await _error_cases(make_emu)
    statuses = sorted(r.status_code for _, r in cases)
    assert statuses == [400, 400, 400, 401, 401, 402, 404, 404, 404, 409, 429, 500, 500]
    for op, response in cases:
        body = response.json()
        _check(spec.validator(spec.schema(op, response.status_code)), body, f"{op} {body}")


async def test_503_matches_the_500_schema_plus_its_code(
    spec: Spec, make_emu: Callable[..., Emulator]
) -> None:
    """503 ``service_unavailable`` is undeclared; apart from its code it is the 500 envelope."""
    emu = make_emu(faults=FaultPlan(unavailable_before_create=1.0))
    async with client_for(emu) as c:
        r = await create(c, "cctv-cam")
    assert r.status_code == 503
    schema = spec.schema(CREATE_RUN, 500)
    schema["properties"]["error"]["properties"]["code"]["enum"].append("service_unavailable")
    _check(spec.validator(schema), r.json(), "503")


def test_strictness_catches_extra_keys(spec: Spec) -> None:
    """The strict validators really do reject an unknown key (guards the guard)."""
    validator = spec.validator(spec.schema(GET_RUN, 200))
    good = {"run_id": "run_x", "status": "pending", "progress": 0, "created_at": 1}
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "runId": "run_x"})


# -- assets --------------------------------------------------------------------------------


def _asset_create_schema(spec: Spec) -> dict[str, Any]:
    """The create answer, with ``uploaded_via: "direct"`` allowed (the SDK is ahead)."""
    schema = spec.schema(CREATE_ASSET, 201)
    schema["properties"]["uploaded_via"]["enum"].append("direct")
    return schema


def _check_asset_urls(body: dict[str, Any]) -> None:
    """What ``format: uri`` would have checked: the asset and upload URLs."""
    if body.get("url") is not None:
        assert body["url"].startswith("https://media.flora.ai/assets/asset_")
    if "upload" in body:
        assert body["upload"]["url"].startswith("http://testserver/_storage/")


async def test_asset_create_responses_conform(spec: Spec, emu: Emulator) -> None:
    """Direct, source-URL and signed creates (201) and a key replay (200, same body)."""
    validator = spec.validator(_asset_create_schema(spec))
    async with client_for(emu) as c:
        answers = [
            await upload_direct(c, headers={"Idempotency-Key": "k"}),
            await create_asset(c, "https://example.com/a.png", folder="f", file_name="a.png"),
            await create_asset(c, "signed-url", content_type="image/png", file_name="b.png"),
            await upload_direct(c, headers={"Idempotency-Key": "k"}),
        ]
    assert [r.status_code for r in answers] == [201, 201, 201, 200]
    assert {r.json()["uploaded_via"] for r in answers} == {"direct", "url", "signed_url"}
    for r in answers:
        _check(validator, r.json(), f"create {r.json()['uploaded_via']}")
        _check_asset_urls(r.json())
    assert "upload" in answers[2].json() and "expires_at" in answers[2].json()


async def test_asset_reads_conform_in_every_state(
    spec: Spec, emu: Emulator, clock: ManualClock
) -> None:
    """``GET /assets/{id}`` and every ``GET /assets`` page: pending, ready and failed."""
    one = spec.validator(spec.schema(GET_ASSET, 200))
    many = spec.validator(spec.schema(LIST_ASSETS, 200))
    async with client_for(emu) as c:
        await upload_direct(c, project_id="prj_x")
        await create_asset(c, "https://example.com/ok.png")
        emu.inject("fetch_refused")
        await create_asset(c, "https://example.com/refused.png")
        signed = (await create_asset(c, "signed-url")).json()
        await send_to_storage(c, signed["upload"], png_bytes())
        await c.post(f"/assets/{signed['asset_id']}/complete")
        await create_asset(c, "signed-url", file_name="never-sent.png")
        seen = set()
        for _ in range(3):
            params: dict[str, Any] = {"limit": 2}
            while True:
                page = (await c.get("/assets", params=params)).json()
                _check(many, page, "list assets")
                for item in page["assets"]:
                    _check_asset_urls(item)
                    body = (await c.get(f"/assets/{item['asset_id']}")).json()
                    _check(one, body, f"get {body['status']}")
                    seen.add(body["status"])
                if not page["meta"]["next_cursor"]:
                    break
                params["cursor"] = page["meta"]["next_cursor"]
            clock.advance(5)
    assert seen == {"pending_upload", "ready", "failed"}


async def test_asset_complete_and_retry_conform(
    spec: Spec, emu: Emulator, clock: ManualClock
) -> None:
    """Complete (pending, replayed) and retry (after a failure, after expiry) answers."""
    done = spec.validator(spec.schema(COMPLETE_ASSET, 200))
    again = spec.validator(spec.schema(RETRY_ASSET, 200))
    async with client_for(emu) as c:
        emu.inject("ingest_failure")
        body = (await create_asset(c, "signed-url")).json()
        await send_to_storage(c, body["upload"], png_bytes())
        path = f"/assets/{body['asset_id']}"
        completes = [
            await c.post(f"{path}/complete", headers={"Idempotency-Key": "c"}),
            await c.post(f"{path}/complete", headers={"Idempotency-Key": "c"}),
        ]
        clock.advance(60)
        retries = [await c.post(f"{path}/retry")]
        expired = (await create_asset(c, "signed-url")).json()
        clock.advance(900)
        retries.append(await c.post(f"/assets/{expired['asset_id']}/retry"))
    assert [r.status_code for r in completes + retries] == [200, 200, 200, 200]
    for r in completes:
        _check(done, r.json(), "complete")
    for r in retries:
        _check(again, r.json(), "retry")
        _check_asset_urls(r.json())
        assert r.json()["upload"] and r.json()["status"] == "pending_upload"


async def _asset_error_cases(
    make_emu: Callable[..., Emulator],
) -> list[tuple[Operation, httpx.Response]]:
    """One response for each error the emulator gives on the assets routes."""
    cases: list[tuple[Operation, httpx.Response]] = []
    emu = make_emu(idempotency="conflict")
    async with client_for(emu, auth=False) as c:
        cases.append((CREATE_ASSET, await create_asset(c, "signed-url")))
        bad_key = {"Authorization": "Bearer nope"}
        cases.append((LIST_ASSETS, await c.get("/assets", headers=bad_key)))
    async with client_for(emu) as c:
        cases.append((CREATE_ASSET, await c.post("/assets", content=b"{]")))
        cases.append((CREATE_ASSET, await create_asset(c, "http://example.com/a.png")))
        cases.append((LIST_ASSETS, await c.get("/assets", params={"limit": 500})))
        cases.append((CREATE_ASSET, await create_asset(c, "signed-url", workspace_id="ws_x")))
        cases.append((GET_ASSET, await c.get("/assets/asset_nope")))
        cases.append((COMPLETE_ASSET, await c.post("/assets/asset_nope/complete")))
        cases.append((RETRY_ASSET, await c.post("/assets/asset_nope/retry")))
        key = {"Idempotency-Key": "k"}
        made = (await create_asset(c, "signed-url", headers=key)).json()
        cases.append((CREATE_ASSET, await create_asset(c, "signed-url", headers=key)))
        cases.append((COMPLETE_ASSET, await c.post(f"/assets/{made['asset_id']}/complete")))
        direct = (await upload_direct(c)).json()
        cases.append((RETRY_ASSET, await c.post(f"/assets/{direct['asset_id']}/retry")))
        for kind in ("rate_limit", "error_before_asset_create", "error_after_asset_create"):
            emu.inject(kind)
            cases.append((CREATE_ASSET, await create_asset(c, "signed-url")))
    return cases


async def test_asset_error_responses_conform(spec: Spec, make_emu: Callable[..., Emulator]) -> None:
    """401 ×2, 400 ×3, 403, 404 ×3, 409 ×3 (one duplicate, two ``conflict``), 429, 500 ×2."""
    cases = await _asset_error_cases(make_emu)
    statuses = sorted(r.status_code for _, r in cases)
    assert statuses == [400, 400, 400, 401, 401, 403, 404, 404, 404, 409, 409, 409, 429, 500, 500]
    for op, response in cases:
        body = response.json()
        schema = spec.schema(op, response.status_code)
        if body["error"]["code"] == "conflict":  # docs-only code (ASSETS.md §4, §10)
            schema["properties"]["error"]["properties"]["code"]["enum"].append("conflict")
        _check(spec.validator(schema), body, f"{op} {body}")

"""The assets endpoints (ASSETS.md): three create paths, lifecycle, storage, idempotency,
faults, run inputs and inspection."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from emulator_helpers import (
    AUTH,
    client_for,
    create,
    create_asset,
    png_bytes,
    png_header,
    send_to_storage,
    signed_upload,
    upload_direct,
)

from flora_batch.emulator import (
    ASSET_MEDIA,
    COMPLETE_ASSET,
    CREATE_ASSET,
    DIRECT_UPLOAD_LIMIT,
    GET_ASSET,
    LIST_ASSETS,
    RETRY_ASSET,
    ROUTES,
    STORAGE,
    Emulator,
    EmulatorConfig,
    FaultPlan,
    ManualClock,
)
from flora_batch.emulator.serve import _banner, start_server
from flora_batch.emulator.uploads import FETCH_SECONDS, INGEST_SECONDS

Factory = Callable[..., Emulator]


async def _error(response: httpx.Response, status: int, code: str) -> list[str]:
    """Assert the envelope's status and code; return the ``fields`` names."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return [f["field"] for f in error.get("fields", [])]


# -- the three create paths --------------------------------------------------------------


async def test_direct_upload_is_ready_in_one_call(emu: Emulator, client: httpx.AsyncClient) -> None:
    """Path A: multipart bytes → 201, ``uploaded_via: direct``, ``ready``, media.flora.ai URL."""
    data = png_bytes(40, 30)
    r = await upload_direct(client, data, "hero.png")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["uploaded_via"], body["status"], body["visibility"]) == (
        "direct",
        "ready",
        "workspace",
    )
    assert body["url"] == f"https://media.flora.ai/assets/{body['asset_id']}/hero.png"
    assert "upload" not in body and "upload_url" not in body
    got = (await client.get(f"/assets/{body['asset_id']}")).json()
    assert (got["size_bytes"], got["width"], got["height"]) == (len(data), 40, 30)
    assert (got["content_type"], got["upload_content_type"], got["name"]) == (
        "image/png",
        "image/png",
        "hero.png",
    )
    assert got["failure_message"] is None and got["created_at"] == "2026-01-01T00:00:00.000Z"
    assert emu.assets[body["asset_id"]].sha256 == hashlib.sha256(data).hexdigest()


async def test_direct_upload_keeps_optional_parts(client: httpx.AsyncClient) -> None:
    """``content_type``, ``file_name``, ``folder`` and ``project_id`` parts are honoured."""
    r = await upload_direct(
        client,
        png_bytes(),
        "local-name.bin",
        part_type="application/octet-stream",
        content_type="image/png",
        file_name="row-7.png",
        folder="api-uploads",
        project_id="prj_abc",
    )
    assert r.status_code == 201, r.text
    assert r.json()["url"].endswith("/row-7.png")
    [item] = (await client.get("/assets")).json()["assets"]
    assert (item["name"], item["project_id"], item["upload_content_type"]) == (
        "row-7.png",
        "prj_abc",
        "image/png",
    )


async def test_source_url_is_fetched_after_a_delay(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Path B: ``pending_upload`` while "fetching", then ``ready`` with bytes drawn from the URL."""
    url = "https://images.example.org/catalog/shoe%201.jpg?v=2"
    r = await create_asset(client, url)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["uploaded_via"], body["status"]) == ("url", "pending_upload")
    assert body["url"].endswith("/shoe%201.jpg")
    pending = (await client.get(f"/assets/{body['asset_id']}")).json()
    assert pending["status"] == "pending_upload" and pending["size_bytes"] is None
    clock.advance(FETCH_SECONDS)
    ready = (await client.get(f"/assets/{body['asset_id']}")).json()
    assert (ready["status"], ready["content_type"], ready["name"]) == (
        "ready",
        "image/jpeg",
        "shoe 1.jpg",
    )
    assert ready["size_bytes"] > 0 and ready["width"] and ready["height"]
    again = (await create_asset(client, url)).json()["asset_id"]
    record = emu.assets[body["asset_id"]]
    assert emu.assets[again].sha256 == record.sha256  # deterministic bytes per URL
    assert record.source == url


async def test_speed_divides_fetch_and_ingest_times(make_emu: Factory, clock: ManualClock) -> None:
    """``speed=10`` divides ``FETCH_SECONDS`` and ``INGEST_SECONDS`` by ten."""
    async with client_for(make_emu(speed=10)) as c:
        fetched = (await create_asset(c, "https://example.com/a.png")).json()["asset_id"]
        signed = await signed_upload(c, png_bytes())
        clock.advance(min(FETCH_SECONDS, INGEST_SECONDS) / 10 - 0.01)
        assert (await c.get(f"/assets/{fetched}")).json()["status"] == "pending_upload"
        assert (await c.get(f"/assets/{signed['asset_id']}")).json()["status"] == "pending_upload"
        clock.advance(max(FETCH_SECONDS, INGEST_SECONDS) / 10)
        assert (await c.get(f"/assets/{fetched}")).json()["status"] == "ready"
        assert (await c.get(f"/assets/{signed['asset_id']}")).json()["status"] == "ready"


async def test_signed_upload_end_to_end(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Path C: reserve → multipart POST to the fake storage (204) → complete → poll → ready."""
    data = png_bytes(64, 48, "blue")
    r = await create_asset(client, "signed-url", file_name="big.png", content_type="image/png")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["uploaded_via"], body["status"]) == ("signed_url", "pending_upload")
    upload = body["upload"]
    assert upload["url"].startswith("http://testserver/_storage/")
    assert (upload["method"], upload["content_type"], upload["file_field"]) == (
        "POST",
        "multipart/form-data",
        "file",
    )
    assert upload["form_fields"]["Content-Type"] == "image/png"
    assert body["expires_at"] == "2026-01-01T00:15:00.000Z"
    stored = await send_to_storage(client, upload, data)
    assert stored.status_code == 204 and stored.content == b""
    asset_id = body["asset_id"]
    assert (await client.get(f"/assets/{asset_id}")).json()["status"] == "pending_upload"
    done = await client.post(f"/assets/{asset_id}/complete")
    assert done.status_code == 200
    assert done.json()["status"] == "pending_upload" and done.json()["failure_message"] is None
    clock.advance(INGEST_SECONDS)
    ready = (await client.get(f"/assets/{asset_id}")).json()
    assert (ready["status"], ready["size_bytes"], ready["width"]) == ("ready", len(data), 64)
    media = await client.get(f"http://testserver/assets/{asset_id}/big.png")
    assert media.content == data and media.headers["content-type"] == "image/png"
    assert emu.request_counts[STORAGE] == 1 and emu.request_counts[COMPLETE_ASSET] == 1


def test_signed_upload_over_a_real_socket() -> None:
    """The same flow through uvicorn: multipart parsing and the 204 survive a real server."""
    data = png_bytes(20, 20)
    with (
        start_server(EmulatorConfig(speed=1000)) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH, timeout=5) as api,
    ):
        body = {"source": "signed-url", "workspace_id": "ws_emulator"}
        reserved = api.post("/assets", json=body).json()
        upload = reserved["upload"]
        assert upload["url"].startswith(server.origin)
        files = {"file": ("x.png", data, "image/png")}
        assert httpx.post(upload["url"], data=upload["form_fields"], files=files).status_code == 204
        assert api.post(f"/assets/{reserved['asset_id']}/complete").status_code == 200
        deadline = time.monotonic() + 5
        while (got := api.get(f"/assets/{reserved['asset_id']}").json())["status"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert (
            httpx.get(f"{server.origin}/assets/{reserved['asset_id']}/{got['name']}").content
            == data
        )


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"workspace_id": "ws_emulator"}, "source"),
        ({"source": {"url": "https://example.com/a.png"}, "workspace_id": "ws_emulator"}, "source"),
        ({"source": "http://example.com/a.png", "workspace_id": "ws_emulator"}, "source"),
        ({"source": "data:image/png;base64,AAAA", "workspace_id": "ws_emulator"}, "source"),
        ({"source": "upload", "workspace_id": "ws_emulator"}, "source"),
        ({"source": "/tmp/hero.png", "workspace_id": "ws_emulator"}, "source"),
        ({"source": "https://", "workspace_id": "ws_emulator"}, "source"),
        ({"source": "signed-url"}, "workspace_id"),
        ({"source": "signed-url", "workspace_id": "emulator"}, "workspace_id"),
        ({"source": "signed-url", "workspace_id": "ws_"}, "workspace_id"),
        ({"source": "signed-url", "workspace_id": "ws_emulator", "project_id": "p1"}, "project_id"),
        ({"source": "signed-url", "workspace_id": "ws_emulator", "folder": 3}, "folder"),
        ({"source": "signed-url", "workspace_id": "ws_emulator", "file_name": ""}, "file_name"),
        (
            {"source": "signed-url", "workspace_id": "ws_emulator", "content_type": "text/plain"},
            "content_type",
        ),
        (
            {"source": "signed-url", "workspace_id": "ws_emulator", "idempotency_key": "k"},
            "idempotency_key",
        ),
        ({"source": "signed-url", "workspace_id": "ws_emulator", "name": "x"}, "name"),
    ],
)
async def test_json_create_validation(
    emu: Emulator, client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    """400 ``input_validation_error`` naming the field; no asset is made."""
    fields = await _error(await client.post("/assets", json=body), 400, "input_validation_error")
    assert field in fields
    assert emu.assets == {}


async def test_prefix_error_names_the_prefix(client: httpx.AsyncClient) -> None:
    """A bare workspace id is refused with a message that names ``ws_``."""
    r = await create_asset(client, "signed-url", workspace_id="12345")
    assert "'ws_'" in r.json()["error"]["message"]


async def test_malformed_bodies(client: httpx.AsyncClient) -> None:
    """Not JSON → ``invalid_json``; a JSON array → ``input_validation_error``."""
    await _error(await client.post("/assets", content=b"{]"), 400, "invalid_json")
    await _error(await client.post("/assets", json=[]), 400, "input_validation_error")
    garbled = await client.post(
        "/assets",
        content=b"--x\r\nnot a part",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert garbled.status_code == 400


async def test_other_workspace_is_forbidden(emu: Emulator, client: httpx.AsyncClient) -> None:
    """A well-formed ``ws_`` id the key has no access to is 403 ``forbidden``."""
    await _error(
        await create_asset(client, "signed-url", workspace_id="ws_other"), 403, "forbidden"
    )
    await _error(await upload_direct(client, workspace_id="ws_other"), 403, "forbidden")
    assert emu.assets == {}


async def test_custom_workspace(make_emu: Factory) -> None:
    """``workspace_id`` config: that workspace is accepted, the default one is not."""
    async with client_for(make_emu(workspace_id="ws_team42")) as c:
        ok = await create_asset(c, "signed-url", workspace_id="ws_team42")
        assert ok.status_code == 201 and ok.json()["workspace_id"] == "ws_team42"
        await _error(await create_asset(c, "signed-url"), 403, "forbidden")
        runs = await c.get("/technique-runs", params={"workspace_id": "ws_team42"})
    assert runs.status_code == 200
    with pytest.raises(ValueError, match="workspace_id"):
        EmulatorConfig(workspace_id="team42")


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "api.localhost",
        "10.0.0.5",
        "172.16.3.4",
        "192.168.1.1",
        "169.254.169.254",
        "metadata.google.internal",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[fd00::1]",
        "100.64.0.1",
        "0.0.0.0",
        "2130706433",
        "0x7f.0.0.1",
        "127.1",
    ],
)
async def test_ssrf_hosts_are_refused(emu: Emulator, client: httpx.AsyncClient, host: str) -> None:
    """Loopback, private, shared, link-local and metadata hosts, however written: 400."""
    r = await create_asset(client, f"https://{host}/a.png")
    assert "source" in await _error(r, 400, "input_validation_error")
    assert "private" in r.json()["error"]["message"] and emu.assets == {}


async def test_refuse_fetch_hosts(make_emu: Factory) -> None:
    """Hosts on ``refuse_fetch_hosts`` are refused with 400, so a fallback can be tested."""
    emu = make_emu(refuse_fetch_hosts=(".blocked.example", "cdn.example.net"))
    async with client_for(emu) as c:
        for url in ("https://img.blocked.example/a.png", "https://cdn.example.net/b.png"):
            r = await create_asset(c, url)
            assert "source" in await _error(r, 400, "input_validation_error")
            assert "Could not fetch" in r.json()["error"]["message"]
        assert (await create_asset(c, "https://example.net/c.png")).status_code == 201


async def test_fetch_hosts_allowlist(make_emu: Factory) -> None:
    """With ``fetch_hosts`` set, only those hosts (and subdomains of ``.x`` entries) are fetched."""
    async with client_for(make_emu(fetch_hosts=(".example.com",))) as c:
        assert (await create_asset(c, "https://cdn.example.com/a.png")).status_code == 201
        await _error(
            await create_asset(c, "https://other.org/a.png"), 400, "input_validation_error"
        )


async def test_direct_upload_size_limit(make_emu: Factory) -> None:
    """The direct limit is inclusive; one byte more is 400 naming ``file`` and signed-url."""
    assert DIRECT_UPLOAD_LIMIT == 4 * 1024 * 1024
    data = png_bytes()
    async with client_for(make_emu(direct_upload_limit=len(data))) as c:
        assert (await upload_direct(c, data)).status_code == 201
        r = await upload_direct(c, data + b"\0")
    assert await _error(r, 400, "input_validation_error") == ["file"]
    assert "signed-url" in r.json()["error"]["message"]


async def test_default_direct_limit_is_4_mib(emu: Emulator, client: httpx.AsyncClient) -> None:
    """4 MiB + 1 byte is refused by default."""
    r = await upload_direct(client, png_bytes() + b"\0" * DIRECT_UPLOAD_LIMIT)
    assert await _error(r, 400, "input_validation_error") == ["file"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"data": b""}, "file"),
        ({"data": b"hello", "name": "notes.txt", "part_type": "text/plain"}, "file"),
        ({"data": png_header(20_000, 10_000)}, "file"),
        ({"data": png_header(13_000, 12_000)}, "file"),
        ({"workspace_id": "emulator"}, "workspace_id"),
        ({"source": "https://example.com/a.png"}, "source"),
        ({"colour": "red"}, "colour"),
        ({"content_type": "application/zip"}, "content_type"),
    ],
)
async def test_multipart_create_validation(
    emu: Emulator, client: httpx.AsyncClient, kwargs: dict[str, Any], field: str
) -> None:
    """Empty, unsupported and > 150-megapixel files, bad and unknown parts: 400."""
    fields = await _error(await upload_direct(client, **kwargs), 400, "input_validation_error")
    assert field in fields and emu.assets == {}


async def test_multipart_needs_a_file_part(client: httpx.AsyncClient) -> None:
    """No ``file`` part, or a ``file`` sent as a text field: 400 naming ``file``."""
    only_fields = await client.post(
        "/assets", files={"workspace_id": (None, "ws_emulator"), "folder": (None, "x")}
    )
    assert "file" in await _error(only_fields, 400, "input_validation_error")
    as_text = await client.post(
        "/assets", files={"workspace_id": (None, "ws_emulator"), "file": (None, "abc")}
    )
    assert "file" in await _error(as_text, 400, "input_validation_error")


async def test_content_type_is_sniffed_and_declared_type_kept(client: httpx.AsyncClient) -> None:
    """A PNG declared as JPEG is stored as PNG; the declared type is ``upload_content_type``."""
    r = await upload_direct(client, png_bytes(), "x.jpg", part_type="image/jpeg")
    got = (await client.get(f"/assets/{r.json()['asset_id']}")).json()
    assert (got["content_type"], got["upload_content_type"]) == ("image/png", "image/jpeg")


async def test_unauthenticated_asset_calls(emu: Emulator) -> None:
    """Every asset API route wants the bearer key."""
    async with client_for(emu, auth=False) as c:
        await _error(await create_asset(c, "signed-url"), 401, "unauthorized")
        await _error(await c.get("/assets"), 401, "unauthorized")


# -- lifecycle: complete, retry, expiry, failures --------------------------------------------


async def test_complete_before_bytes_and_twice_is_conflict(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """409 ``conflict`` before any bytes arrived, and again after a complete."""
    body = (await create_asset(client, "signed-url")).json()
    path = f"/assets/{body['asset_id']}/complete"
    await _error(await client.post(path), 409, "conflict")
    await send_to_storage(client, body["upload"], png_bytes())
    assert (await client.post(path)).status_code == 200
    await _error(await client.post(path), 409, "conflict")
    clock.advance(60)
    await _error(await client.post(path), 409, "conflict")


async def test_complete_and_retry_refuse_direct_and_url_assets(client: httpx.AsyncClient) -> None:
    """Paths A and B never need complete or retry: 409 ``conflict``."""
    direct = (await upload_direct(client)).json()["asset_id"]
    fetched = (await create_asset(client, "https://example.com/a.png")).json()["asset_id"]
    for asset_id in (direct, fetched):
        await _error(await client.post(f"/assets/{asset_id}/complete"), 409, "conflict")
        await _error(await client.post(f"/assets/{asset_id}/retry"), 409, "conflict")


async def test_retry_of_a_ready_asset_is_conflict(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """An asset that did not fail cannot be retried."""
    ready = await signed_upload(client, png_bytes(), clock)
    await _error(await client.post(f"/assets/{ready['asset_id']}/retry"), 409, "conflict")


async def test_expired_reservation_then_retry(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """After ``expires_at`` storage says 403; ``retry`` issues a fresh upload for the same id."""
    body = (await create_asset(client, "signed-url")).json()
    clock.advance(900)
    late = await send_to_storage(client, body["upload"], png_bytes())
    assert late.status_code == 403 and b"<Code>AccessDenied</Code>" in late.content
    assert late.headers["content-type"].startswith("application/xml")
    again = await client.post(f"/assets/{body['asset_id']}/retry")
    assert again.status_code == 200
    fresh = again.json()
    assert fresh["asset_id"] == body["asset_id"] and fresh["status"] == "pending_upload"
    assert fresh["upload"]["url"] != body["upload"]["url"]
    assert fresh["expires_at"] == "2026-01-01T00:30:00.000Z"
    old = await send_to_storage(client, body["upload"], png_bytes())
    assert old.status_code == 403  # the superseded token is dead
    assert (await send_to_storage(client, fresh["upload"], png_bytes())).status_code == 204
    assert (await client.post(f"/assets/{body['asset_id']}/complete")).status_code == 200
    clock.advance(INGEST_SECONDS)
    assert emu.assets[body["asset_id"]].status == "ready"
    assert emu.assets[body["asset_id"]].reservations == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"just some text", "Unsupported content type"),
        (png_header(20_000, 10_000), "150 megapixels"),
    ],
)
async def test_bad_signed_bytes_end_failed(
    client: httpx.AsyncClient, clock: ManualClock, data: bytes, message: str
) -> None:
    """Empty, unsupported or oversized uploads are accepted by storage but end ``failed``."""
    body = (await create_asset(client, "signed-url")).json()
    stored = await send_to_storage(
        client, body["upload"], data, "x.bin", "application/octet-stream"
    )
    assert stored.status_code == 204
    await client.post(f"/assets/{body['asset_id']}/complete")
    clock.advance(INGEST_SECONDS)
    got = (await client.get(f"/assets/{body['asset_id']}")).json()
    assert got["status"] == "failed" and message in got["failure_message"]
    assert got["size_bytes"] is None


async def test_failed_signed_upload_can_be_retried(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """``failed`` → retry → upload again → complete → ``ready`` (ASSETS.md §10 recipe)."""
    emu.inject("ingest_failure")
    failed = await signed_upload(client, png_bytes(), clock)
    assert failed["status"] == "failed" and failed["failure_message"]
    retried = await client.post(f"/assets/{failed['asset_id']}/retry")
    assert retried.json()["status"] == "pending_upload"
    assert retried.json()["failure_message"] is None
    await send_to_storage(client, retried.json()["upload"], png_bytes())
    await client.post(f"/assets/{failed['asset_id']}/complete")
    clock.advance(INGEST_SECONDS)
    assert (await client.get(f"/assets/{failed['asset_id']}")).json()["status"] == "ready"


@pytest.mark.parametrize(
    ("mangle", "status", "code"),
    [
        ("file_first", 400, "InvalidArgument"),
        ("missing_field", 403, "AccessDenied"),
        ("changed_field", 403, "AccessDenied"),
        ("no_file", 400, "InvalidArgument"),
        ("two_files", 400, "InvalidArgument"),
        ("bad_token", 403, "AccessDenied"),
        ("authorization", 400, "InvalidArgument"),
    ],
)
async def test_storage_enforces_the_post_policy(
    emu: Emulator, client: httpx.AsyncClient, mangle: str, status: int, code: str
) -> None:
    """Fields before the file, verbatim, one file, a live token, no Authorization header."""
    upload = (await create_asset(client, "signed-url", content_type="image/png")).json()["upload"]
    fields = list(upload["form_fields"].items())
    url: str = upload["url"]
    headers: dict[str, str] = {}
    file_part = ("file", ("x.png", png_bytes(), "image/png"))
    parts: list[tuple[str, Any]] = [(k, (None, v)) for k, v in fields] + [file_part]
    if mangle == "file_first":
        parts = [file_part] + [(k, (None, v)) for k, v in fields]
    elif mangle == "missing_field":
        parts = [p for p in parts if p[0] != "policy"]
    elif mangle == "changed_field":
        parts = [(k, (None, "x")) if k == "Content-Type" else (k, v) for k, v in parts]
    elif mangle == "no_file":
        parts = parts[:-1]
    elif mangle == "two_files":
        parts = [*parts, file_part]
    elif mangle == "bad_token":
        url = url.rsplit("/", 1)[0] + "/forged"
    elif mangle == "authorization":
        headers = AUTH
    async with httpx.AsyncClient(transport=client._transport, headers=headers) as storage:
        r = await storage.post(url, files=parts)
    assert r.status_code == status and f"<Code>{code}</Code>".encode() in r.content
    assert all(record.transfers == 0 for record in emu.assets.values())


async def test_storage_accepts_auth_when_told_to(make_emu: Factory) -> None:
    """``storage_rejects_auth=False`` lets an Authorization header through."""
    async with client_for(make_emu(storage_rejects_auth=False)) as c:
        upload = (await create_asset(c, "signed-url")).json()["upload"]
        assert (await send_to_storage(c, upload, png_bytes(), headers=AUTH)).status_code == 204


async def test_storage_refuses_after_complete_and_has_no_put(client: httpx.AsyncClient) -> None:
    """Completed reservations take no more bytes; the storage answers PUT with 405."""
    body = (await create_asset(client, "signed-url")).json()
    await send_to_storage(client, body["upload"], png_bytes())
    again = await send_to_storage(client, body["upload"], png_bytes(colour="green"))
    assert again.status_code == 204  # a re-send before complete overwrites
    await client.post(f"/assets/{body['asset_id']}/complete")
    assert (await send_to_storage(client, body["upload"], png_bytes())).status_code == 403
    put = await client.put(body["upload"]["url"], content=png_bytes())
    assert put.status_code == 405


async def test_upload_shape_camel(make_emu: Factory) -> None:
    """Older docs' shape: ``upload.formFields`` / ``fileField``, no method or content_type."""
    async with client_for(make_emu(upload_shape="camel")) as c:
        upload = (await create_asset(c, "signed-url")).json()["upload"]
        assert set(upload) == {"url", "fileField", "formFields"}
        shaped = {"url": upload["url"], "form_fields": upload["formFields"]}
        assert (await send_to_storage(c, shaped, png_bytes())).status_code == 204


async def test_upload_shape_serialized(make_emu: Factory) -> None:
    """[TS-fern]'s reading: no ``upload``; ``upload_url`` is JSON ``{"url", "fields"}``."""
    async with client_for(make_emu(upload_shape="serialized")) as c:
        body = (await create_asset(c, "signed-url")).json()
        assert "upload" not in body and body["expires_at"]
        policy = json.loads(body["upload_url"])
        shaped = {"url": policy["url"], "form_fields": policy["fields"]}
        assert (await send_to_storage(c, shaped, png_bytes())).status_code == 204


async def test_upload_shape_bare(make_emu: Factory) -> None:
    """The ambiguous case: ``upload_url`` is a bare URL string (and the storage takes no PUT)."""
    async with client_for(make_emu(upload_shape="bare")) as c:
        body = (await create_asset(c, "signed-url")).json()
        assert "upload" not in body and body["upload_url"].startswith("http://testserver/_storage/")
        assert (await c.put(body["upload_url"], content=png_bytes())).status_code == 405


# -- reading -------------------------------------------------------------------------------


async def test_get_unknown_asset_is_404(client: httpx.AsyncClient) -> None:
    """Unknown ids (and ids not shaped ``asset_…``) are 404 ``not_found``."""
    await _error(await client.get("/assets/asset_nope"), 404, "not_found")
    await _error(await client.get("/assets/nope"), 404, "not_found")
    await _error(await client.post("/assets/asset_nope/complete"), 404, "not_found")
    await _error(await client.post("/assets/asset_nope/retry"), 404, "not_found")


async def test_list_pages_newest_first_and_stays_stable(client: httpx.AsyncClient) -> None:
    """Cursor paging walks every asset once even when assets are made between pages."""
    made = [(await upload_direct(client, name=f"f{n}.png")).json()["asset_id"] for n in range(7)]
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        body = (await client.get("/assets", params=params)).json()
        assert body["meta"]["total_estimate"] >= len(body["assets"])
        seen += [a["asset_id"] for a in body["assets"]]
        await upload_direct(client, name="late.png")
        if not body["meta"]["next_cursor"]:
            break
        params = {"limit": 3, "cursor": body["meta"]["next_cursor"]}
    assert seen == made[::-1]


async def test_list_filters(client: httpx.AsyncClient) -> None:
    """``query`` (name or folder), ``project_id`` and ``workspace_id`` filter the list."""
    await upload_direct(client, name="logo-dark.png", project_id="prj_a")
    await upload_direct(client, name="hero.png", folder="campaign-LOGOS")
    await upload_direct(client, name="other.png")

    async def names(**params: str) -> list[str]:
        r = await client.get("/assets", params=params)
        assert r.status_code == 200, r.text
        return [a["name"] for a in r.json()["assets"]]

    assert await names(query="logo") == ["hero.png", "logo-dark.png"]
    assert await names(project_id="prj_a") == ["logo-dark.png"]
    assert await names(workspace_id="ws_emulator", query="other") == ["other.png"]
    assert await names(workspace_id="ws_elsewhere") == []
    assert await names(query="", workspace_id="") == ["other.png", "hero.png", "logo-dark.png"]


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "101"}, {"cursor": "garbage!"}, {"workspace_id": "w1"}],
)
async def test_list_validation(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    """Bad limit, cursor or id filter: 400 ``input_validation_error``."""
    await _error(await client.get("/assets", params=params), 400, "input_validation_error")


# -- idempotency ------------------------------------------------------------------------------


async def test_replayed_create_returns_the_same_asset(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    """``replay`` mode: a repeated ``Idempotency-Key`` answers 200 with the first asset."""
    key = {"Idempotency-Key": "sha-of-file"}
    first = await upload_direct(client, headers=key)
    again = await upload_direct(client, png_bytes(10, 10), "other.png", headers=key)
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["asset_id"] == first.json()["asset_id"]
    assert len(emu.assets) == 1 and emu.assets[first.json()["asset_id"]].idempotency_key == (
        "sha-of-file"
    )


async def test_conflict_mode_is_409_without_the_asset(make_emu: Factory) -> None:
    """``idempotency="conflict"`` (ASSETS.md §9): 409 ``idempotency_duplicate``, no asset id."""
    emu = make_emu(idempotency="conflict")
    async with client_for(emu) as c:
        await create_asset(c, "signed-url", headers={"Idempotency-Key": "k"})
        r = await create_asset(c, "signed-url", headers={"Idempotency-Key": "k"})
    assert r.status_code == 409
    assert r.json() == {
        "error": {"code": "idempotency_duplicate", "message": "Duplicate idempotency key."}
    }
    assert len(emu.assets) == 1


async def test_asset_idempotency_overrides_the_run_mode(make_emu: Factory) -> None:
    """``asset_idempotency="conflict"``: assets answer 409 while runs still replay."""
    emu = make_emu(asset_idempotency="conflict")
    async with client_for(emu) as c:
        await upload_direct(c, headers={"Idempotency-Key": "k"})
        await _error(
            await upload_direct(c, headers={"Idempotency-Key": "k"}), 409, "idempotency_duplicate"
        )
        await create(c, key="k")
        assert (await create(c, key="k")).status_code == 200


async def test_asset_key_window(make_emu: Factory, clock: ManualClock) -> None:
    """After ``key_window`` seconds the same key makes a new asset."""
    emu = make_emu(key_window=7200, idempotency="conflict")
    key = {"Idempotency-Key": "k"}
    async with client_for(emu) as c:
        await upload_direct(c, headers=key)
        clock.advance(7199)
        assert (await upload_direct(c, headers=key)).status_code == 409
        clock.advance(1)
        assert (await upload_direct(c, headers=key)).status_code == 201
    assert len(emu.assets) == 2


async def test_failed_create_does_not_bind_the_key(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    """A 400 or a 500 before the asset exists leaves the key free."""
    key = {"Idempotency-Key": "k"}
    await upload_direct(client, b"", headers=key)
    emu.inject("error_before_asset_create")
    await _error(await upload_direct(client, headers=key), 500, "unknown_error")
    assert (await upload_direct(client, headers=key)).status_code == 201
    assert len(emu.assets) == 1


async def test_complete_and_retry_keys(make_emu: Factory, clock: ManualClock) -> None:
    """A repeated key on complete replays (200) in ``replay`` mode, 409 in ``conflict`` mode."""
    for mode, status in (("replay", 200), ("conflict", 409)):
        async with client_for(make_emu(idempotency=mode)) as c:
            body = (await create_asset(c, "signed-url")).json()
            await send_to_storage(c, body["upload"], png_bytes())
            path = f"/assets/{body['asset_id']}/complete"
            assert (await c.post(path, headers={"Idempotency-Key": "c"})).status_code == 200
            again = await c.post(path, headers={"Idempotency-Key": "c"})
            assert again.status_code == status, again.text
            clock.advance(900)
            retry = f"/assets/{body['asset_id']}/retry"
            await _error(await c.post(retry, headers={"Idempotency-Key": "r"}), 409, "conflict")


async def test_empty_idempotency_header_is_refused(client: httpx.AsyncClient) -> None:
    """An empty ``Idempotency-Key`` header is a 400, not a silent keyless create."""
    r = await create_asset(client, "signed-url", headers={"Idempotency-Key": " "})
    assert await _error(r, 400, "input_validation_error") == ["Idempotency-Key"]


# -- faults -----------------------------------------------------------------------------------


async def test_error_before_asset_create(emu: Emulator, client: httpx.AsyncClient) -> None:
    """500 ``unknown_error`` and no asset."""
    emu.inject("error_before_asset_create")
    await _error(await upload_direct(client), 500, "unknown_error")
    assert emu.assets == {}


async def test_error_after_asset_create_then_replay(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    """500 though the asset was made; the same key then replays it: one asset in all."""
    emu.inject("error_after_asset_create")
    key = {"Idempotency-Key": "k"}
    await _error(await upload_direct(client, headers=key), 500, "unknown_error")
    assert len(emu.assets) == 1
    again = await upload_direct(client, headers=key)
    assert again.status_code == 200 and again.json()["asset_id"] in emu.assets
    assert len(emu.assets) == 1


async def test_drop_after_asset_create(emu: Emulator, client: httpx.AsyncClient) -> None:
    """The connection drops after the asset was made; a keyed retry recovers it."""
    emu.inject("drop_after_asset_create")
    key = {"Idempotency-Key": "k"}
    with pytest.raises(httpx.RemoteProtocolError):
        await create_asset(client, "signed-url", headers=key)
    recovered = await create_asset(client, "signed-url", headers=key)
    assert recovered.status_code == 200 and recovered.json()["upload"]
    assert list(emu.assets) == [recovered.json()["asset_id"]]


async def test_storage_error(emu: Emulator, client: httpx.AsyncClient) -> None:
    """The storage answers 5xx and keeps nothing; a retry of the transfer then works."""
    upload = (await create_asset(client, "signed-url")).json()["upload"]
    emu.inject("storage_error")
    failed = await send_to_storage(client, upload, png_bytes())
    assert failed.status_code in (500, 503) and b"<Error>" in failed.content
    [record] = emu.assets.values()
    assert record.transfers == 0 and record.sha256 is None
    assert (await send_to_storage(client, upload, png_bytes())).status_code == 204
    assert record.transfers == 1


async def test_fetch_refused(emu: Emulator, client: httpx.AsyncClient, clock: ManualClock) -> None:
    """A source URL whose fetch fails ends ``failed`` with a ``failure_message``."""
    emu.inject("fetch_refused")
    asset_id = (await create_asset(client, "https://example.com/a.png")).json()["asset_id"]
    clock.advance(FETCH_SECONDS)
    got = (await client.get(f"/assets/{asset_id}")).json()
    assert got["status"] == "failed" and "fetch" in got["failure_message"]
    await _error(await client.post(f"/assets/{asset_id}/retry"), 409, "conflict")


async def test_unsupported_fetched_type_fails(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """A source URL of a type FLORA does not store fails after the fetch, not at create."""
    r = await create_asset(client, "https://example.com/notes.txt")
    assert r.status_code == 201
    clock.advance(FETCH_SECONDS)
    got = (await client.get(f"/assets/{r.json()['asset_id']}")).json()
    assert got["status"] == "failed" and "text/plain" in got["failure_message"]


async def test_rate_limit_and_bad_gateway_on_asset_routes(make_emu: Factory) -> None:
    """``rate_limit`` and ``bad_gateway`` apply to every asset API route."""
    emu = make_emu(faults=FaultPlan(rate_limit=1.0, retry_after=3))
    async with client_for(emu) as c:
        for response in (
            await create_asset(c, "signed-url"),
            await c.get("/assets"),
            await c.get("/assets/asset_x"),
            await c.post("/assets/asset_x/complete"),
            await c.post("/assets/asset_x/retry"),
        ):
            await _error(response, 429, "rate_limited")
            assert response.headers["retry-after"] == "3"
    assert emu.assets == {}
    gateway = make_emu(faults=FaultPlan(bad_gateway=1.0))
    async with client_for(gateway) as c:
        r = await upload_direct(c)
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")


async def test_slow_applies_to_asset_routes_and_storage(make_emu: Factory) -> None:
    """``slow`` delays asset calls and storage transfers alike."""
    emu = make_emu(faults=FaultPlan(slow=1.0, slow_seconds=0.05))
    async with client_for(emu) as c:
        started = time.monotonic()
        upload = (await create_asset(c, "signed-url")).json()["upload"]
        assert (await send_to_storage(c, upload, png_bytes())).status_code == 204
    assert time.monotonic() - started >= 0.1


async def test_asset_faults_replay_from_the_seed(make_emu: Factory) -> None:
    """The same plan gives the same asset faults in the same order, and parses from text."""
    plan = FaultPlan.parse("seed=11,error_before_asset_create=0.3,fetch_refused=0.5")
    assert plan.error_before_asset_create == 0.3 and plan.fetch_refused == 0.5

    async def outcomes() -> list[tuple[int, str | None]]:
        emu = make_emu(faults=plan)
        result = []
        async with client_for(emu) as c:
            for n in range(12):
                r = await create_asset(c, f"https://example.com/{n}.png")
                failure = None
                if r.status_code == 201:
                    failure = emu.assets[r.json()["asset_id"]].failure
                result.append((r.status_code, failure))
        return result

    first = await outcomes()
    assert first == await outcomes()
    assert {s for s, _ in first} == {201, 500} and any(f for _, f in first)


# -- assets as run inputs ---------------------------------------------------------------------


async def test_asset_url_is_a_run_input_only_when_ready(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """A pending asset's URL is refused (400 naming the input); once ready, it is accepted."""
    url = (await create_asset(client, "https://example.com/face.png")).json()["url"]
    early = await create(client, "cctv-cam", key="r1", face=url)
    assert await _error(early, 400, "input_validation_error") == ["face"]
    assert "not ready" in early.json()["error"]["message"]
    clock.advance(FETCH_SECONDS)
    assert (await create(client, "cctv-cam", key="r1", face=url)).status_code == 201


async def test_failed_and_unknown_asset_urls_are_refused(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """A failed asset, an unknown id, or a tampered file name: 400."""
    emu.inject("fetch_refused")
    failed = (await create_asset(client, "https://example.com/a.png")).json()["url"]
    clock.advance(FETCH_SECONDS)
    good = (await upload_direct(client, name="b.png")).json()["url"]
    for url in (
        failed,
        "https://media.flora.ai/assets/asset_nope/x.png",
        good.replace("b.png", "c.png"),
    ):
        r = await create(client, "cctv-cam", key=None, face=url)
        assert await _error(r, 400, "input_validation_error") == ["face"], url
    assert (await create(client, "cctv-cam", key=None, face=good)).status_code == 201


async def test_require_ready_assets_off(make_emu: Factory) -> None:
    """``require_ready_assets=False`` accepts any allowlisted URL, ready or not."""
    async with client_for(make_emu(require_ready_assets=False)) as c:
        url = (await create_asset(c, "signed-url")).json()["url"]
        assert (await create(c, "cctv-cam", face=url)).status_code == 201


async def test_asset_bytes_are_served_at_their_public_path(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """``GET /assets/{id}/{name}`` (no auth) once ready, also through the public host."""
    fetched = (await create_asset(client, "https://example.com/pic.webp")).json()
    path = fetched["url"].removeprefix("https://media.flora.ai")
    async with httpx.AsyncClient(transport=client._transport) as anonymous:
        assert (await anonymous.get(f"http://testserver{path}")).status_code == 404
        clock.advance(FETCH_SECONDS)
        served = await anonymous.get(f"http://testserver{path}")
    assert served.status_code == 200 and served.headers["content-type"] == "image/webp"
    record = emu.assets[fetched["asset_id"]]
    assert hashlib.sha256(served.content).hexdigest() == record.sha256
    public = httpx.AsyncClient(mounts={"https://media.flora.ai": client._transport})
    async with public:
        assert (await public.get(fetched["url"])).content == served.content
    assert emu.request_counts[ASSET_MEDIA] == 3


# -- inspection ---------------------------------------------------------------------------------


async def test_inspection_api(emu: Emulator, client: httpx.AsyncClient, clock: ManualClock) -> None:
    """``emu.assets`` records, ``assets_by_sha256()``, counts, the state route and reset."""
    data, start = png_bytes(8, 8), clock()
    direct = (await upload_direct(client, data, headers={"Idempotency-Key": "k1"})).json()
    signed = await signed_upload(client, data, clock, file_name="same.png")
    await client.get("/assets")
    record = emu.assets[direct["asset_id"]]
    assert (record.size, record.content_type, record.file_name, record.uploaded_via) == (
        len(data),
        "image/png",
        "hero.png",
        "direct",
    )
    assert (record.status, record.idempotency_key, record.created_at) == ("ready", "k1", start)
    sha = hashlib.sha256(data).hexdigest()
    assert emu.assets_by_sha256() == {sha: 2}  # the same file, uploaded twice
    assert emu.assets[signed["asset_id"]].transfers == 1
    counts = emu.request_counts
    assert (counts[CREATE_ASSET], counts[STORAGE], counts[COMPLETE_ASSET]) == (2, 1, 1)
    assert (counts[GET_ASSET], counts[LIST_ASSETS], counts[RETRY_ASSET]) == (1, 1, 0)
    assert {CREATE_ASSET, LIST_ASSETS, GET_ASSET, COMPLETE_ASSET, STORAGE} <= set(ROUTES)
    async with httpx.AsyncClient(transport=client._transport) as anonymous:
        state = (await anonymous.get("http://testserver/_emulator/state")).json()
    assert [a["asset_id"] for a in state["assets"]] == [direct["asset_id"], signed["asset_id"]]
    first = state["assets"][0]
    assert (first["sha256"], first["size"], first["status"], first["idempotency_key"]) == (
        sha,
        len(data),
        "ready",
        "k1",
    )
    assert state["assets_by_sha256"] == {sha: 2}
    assert state["request_counts"][CREATE_ASSET] == 2
    emu.reset()
    assert emu.assets == {} and emu.assets_by_sha256() == {}
    assert (await upload_direct(client, headers={"Idempotency-Key": "k1"})).status_code == 201


def test_banner_prints_the_workspace() -> None:
    """The ``emulator`` command prints the workspace a client must send."""
    config = EmulatorConfig(workspace_id="ws_demo")
    with start_server(config) as handle:
        banner = _banner(handle, config)
    assert "Workspace: ws_demo (set FLORA_WORKSPACE_ID=ws_demo)" in banner.splitlines()


def test_emulator_command_refuses_a_bad_workspace() -> None:
    """``--workspace-id`` without the ``ws_`` prefix is a clean error, not a traceback."""
    from click.testing import CliRunner

    from flora_batch.emulator.serve import emulator_command

    result = CliRunner().invoke(emulator_command, ["--port", "0", "--workspace-id", "team"])
    assert result.exit_code == 1 and "workspace_id" in result.output

"""Create-request validation (CONTRACT.md §3, §9): 400s with ``fields``, nothing charged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from emulator_helpers import MEDIA_URL, client_for, run_body

from flora_batch.emulator import Emulator


async def _create(
    client: httpx.AsyncClient, body: Any, technique: str = "icon-pack"
) -> httpx.Response:
    return await client.post(f"/techniques/{technique}/runs", json=body)


def _fields(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "input_validation_error"
    return {f["field"]: f["message"] for f in error["fields"]}


async def test_malformed_json_is_invalid_json(emu: Emulator, client: httpx.AsyncClient) -> None:
    """A body that is not JSON: 400 ``invalid_json``, no ``fields``."""
    r = await client.post(
        "/techniques/icon-pack/runs",
        content=b'{"inputs": [',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"
    assert "fields" not in r.json()["error"]
    assert emu.runs == {} and emu.charges == []


async def test_missing_required_input_message_style(client: httpx.AsyncClient) -> None:
    """The spec's example: ``prompt: Required`` plus a ``fields`` entry for ``prompt``."""
    body = {"inputs": [{"id": "style", "type": "text", "value": "glyph"}], "mode": "async"}
    r = await _create(client, body)
    assert r.json() == {
        "error": {
            "code": "input_validation_error",
            "message": "prompt: Required",
            "fields": [{"field": "prompt", "message": "Required"}],
        }
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.update(extra=1), "extra"),
        (lambda b: b.pop("inputs"), "inputs"),
        (lambda b: b.update(inputs=[]), "inputs"),
        (lambda b: b.update(inputs="prompt"), "inputs"),
        (lambda b: b.pop("mode"), "mode"),
        (lambda b: b.update(mode="stream"), "mode"),
        (lambda b: b.update(mode="sync"), "mode"),
        (lambda b: b.update(idempotency_key=7), "idempotency_key"),
        (lambda b: b.update(idempotency_key=""), "idempotency_key"),
        (lambda b: b.update(callback_url="http://example.com/hook"), "callback_url"),
        (lambda b: b["inputs"][0].update(extra="x"), "inputs.0"),
        (lambda b: b["inputs"][0].pop("value"), "inputs.0.value"),
        (lambda b: b["inputs"][0].update(value=3), "inputs.0.value"),
        (lambda b: b["inputs"][0].update(type="audioUrl"), "inputs.0.type"),
        (lambda b: b["inputs"].append("x"), "inputs.1"),
        (lambda b: b["inputs"].append({"id": "colour", "type": "text", "value": "red"}), "colour"),
        (lambda b: b["inputs"].append(dict(b["inputs"][0])), "prompt"),
        (lambda b: b["inputs"][0].update(type="imageUrl"), "prompt"),
        (lambda b: b["inputs"][0].update(value="  "), "prompt"),
        (lambda b: b["inputs"].append({"id": "style", "type": "text", "value": ""}), "style"),
    ],
)
async def test_each_body_problem_is_a_field_error(
    emu: Emulator, client: httpx.AsyncClient, change: Any, field: str
) -> None:
    """Unknown fields, wrong shapes, wrong types, empty values, bad mode: one field each."""
    body = run_body("icon-pack")
    change(body)
    fields = _fields(await _create(client, body))
    assert field in fields, fields
    assert emu.charges == [] and emu.runs == {}


async def test_body_must_be_an_object(client: httpx.AsyncClient) -> None:
    """A JSON array is valid JSON but not a create request."""
    assert _fields(await _create(client, [1, 2])) == {"body": "Expected object, received array"}


async def test_empty_optional_input_is_rejected_not_ignored(client: httpx.AsyncClient) -> None:
    """An optional input sent as "" is an error (omit it instead)."""
    body = run_body("icon-pack")
    body["inputs"].append({"id": "style", "type": "text", "value": ""})
    assert "omit" in _fields(await _create(client, body))["style"]


async def test_type_aliases_are_accepted(client: httpx.AsyncClient) -> None:
    """The docs' aliases (``image_url``) mean ``imageUrl``."""
    body = run_body("cctv-cam")
    body["inputs"][0]["type"] = "image_url"
    assert (await _create(client, body, "cctv-cam")).status_code == 201


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("http://media.flora.ai/a.png", "https://"),
        ("https://example.com/a.png", "example.com"),
        ("/tmp/a.png", "https://"),
        ("data:image/png;base64,AAAA", "https://"),
    ],
)
async def test_media_urls_must_be_https_on_allowed_hosts(
    client: httpx.AsyncClient, url: str, hint: str
) -> None:
    """Non-HTTPS URLs and hosts off the allowlist are 400s on the input's id."""
    fields = _fields(await _create(client, run_body("cctv-cam", face=url), "cctv-cam"))
    assert hint in fields["face"]


@pytest.mark.parametrize(
    "url",
    [
        MEDIA_URL,
        "https://storage.googleapis.com/bucket/a.png",
        "https://bucket.storage.googleapis.com/a.png",
        "https://bucket.s3.eu-west-1.amazonaws.com/a.png",
        "https://ik.imagekit.io/flora/a.png",
    ],
)
async def test_allowed_hosts_pass(client: httpx.AsyncClient, url: str) -> None:
    """The seed document's hosts are accepted."""
    r = await _create(client, run_body("cctv-cam", key=url, face=url), "cctv-cam")
    assert r.status_code == 201, r.text


async def test_allowlist_is_configurable(make_emu: Callable[..., Emulator]) -> None:
    """A custom allowlist replaces the default one."""
    emu = make_emu(allowed_hosts=("cdn.example.com",))
    async with client_for(emu) as c:
        ok = await _create(
            c, run_body("cctv-cam", face="https://cdn.example.com/a.png"), "cctv-cam"
        )
        bad = await _create(c, run_body("cctv-cam", key="k2"), "cctv-cam")
    assert ok.status_code == 201
    assert "media.flora.ai" in _fields(bad)["face"]


async def test_text_pattern_is_checked(client: httpx.AsyncClient) -> None:
    """``quick-reframe`` wants an aspect ratio like ``9:16`` in its text input."""
    fields = _fields(
        await _create(client, run_body("quick-reframe", aspect_ratio="tall"), "quick-reframe")
    )
    assert "9:16" in fields["aspect_ratio"]


async def test_all_problems_reported_at_once(client: httpx.AsyncClient) -> None:
    """Several mistakes give several fields and a message joining them."""
    body = {"inputs": [{"id": "face", "type": "text", "value": "x"}], "mode": "stream", "x": 1}
    r = await _create(client, body, "cctv-cam")
    fields = _fields(r)
    assert set(fields) == {"x", "mode", "face"}
    message = r.json()["error"]["message"]
    assert message.startswith("x: Unrecognized key") and "; mode: " in message

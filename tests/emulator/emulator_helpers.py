"""Helpers shared by the emulator tests: an in-process client, valid create bodies, uploads."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from PIL import Image

from flora_batch.emulator import DEFAULT_API_KEY, WORKSPACE_ID, Emulator, ManualClock

MEDIA_URL = "https://media.flora.ai/uploads/row-7.png"
AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


@asynccontextmanager
async def client_for(
    emulator: Emulator, *, auth: bool = True, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to ``emulator`` in-process, at ``http://testserver/api/v1``."""
    transport = httpx.ASGITransport(app=emulator.app, raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver/api/v1",
        headers=AUTH if auth else {},
    ) as client:
        yield client


def run_body(
    technique: str = "icon-pack", key: str | None = "key-1", **values: str
) -> dict[str, Any]:
    """A valid create body for a few techniques; ``values`` override input values by id."""
    defaults = {
        "icon-pack": [("prompt", "text", "weather icons")],
        "cctv-cam": [("face", "imageUrl", MEDIA_URL)],
        "product-animator": [("product", "imageUrl", MEDIA_URL)],
        "palette-pull": [("image", "imageUrl", MEDIA_URL)],
        "quick-reframe": [("layout", "imageUrl", MEDIA_URL), ("aspect_ratio", "text", "9:16")],
        "seamless-transition": [
            ("start_frame", "imageUrl", MEDIA_URL),
            ("end_frame", "imageUrl", "https://storage.googleapis.com/b/end.png"),
        ],
        "vector-icons": [("prompt", "text", "weather icons")],
        "web-stills": [("product", "imageUrl", MEDIA_URL)],
        "phone-snap": [("product", "imageUrl", MEDIA_URL)],
    }[technique]
    inputs = [{"id": i, "type": t, "value": values.get(i, v)} for i, t, v in defaults]
    body: dict[str, Any] = {"inputs": inputs, "mode": "async"}
    if key is not None:
        body["idempotency_key"] = key
    return body


async def create(
    client: httpx.AsyncClient,
    technique: str = "icon-pack",
    key: str | None = "key-1",
    **values: str,
) -> httpx.Response:
    """POST a valid create for ``technique``."""
    return await client.post(
        f"/techniques/{technique}/runs", json=run_body(technique, key, **values)
    )


async def finish(client: httpx.AsyncClient, clock: ManualClock, run_id: str) -> dict[str, Any]:
    """Advance the clock past any run's end and return the run object."""
    clock.advance(3600)
    response = await client.get(f"/runs/{run_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def png_bytes(width: int = 40, height: int = 30, colour: str = "red") -> bytes:
    """A small real PNG."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` × ``height`` pixels (header only: a tiny file)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


async def upload_direct(
    client: httpx.AsyncClient,
    data: bytes | None = None,
    name: str = "hero.png",
    part_type: str = "image/png",
    headers: dict[str, str] | None = None,
    **fields: str,
) -> httpx.Response:
    """Path A: a multipart ``POST /assets`` with the bytes (fields first, then ``file``)."""
    fields.setdefault("workspace_id", WORKSPACE_ID)
    files = {"file": (name, png_bytes() if data is None else data, part_type)}
    return await client.post("/assets", data=fields, files=files, headers=headers)


async def create_asset(
    client: httpx.AsyncClient, source: str, headers: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    """Paths B and C: a JSON ``POST /assets`` (``source`` = URL or ``"signed-url"``)."""
    body = {"source": source, "workspace_id": WORKSPACE_ID, **fields}
    return await client.post("/assets", json=body, headers=headers)


async def send_to_storage(
    client: httpx.AsyncClient,
    upload: dict[str, Any],
    data: bytes,
    name: str = "big.png",
    part_type: str = "image/png",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """ASSETS.md §3: POST the policy fields, in order, then the file; no FLORA auth header."""
    async with httpx.AsyncClient(transport=client._transport, headers=headers) as storage:
        return await storage.post(
            upload["url"], data=upload["form_fields"], files={"file": (name, data, part_type)}
        )


async def signed_upload(
    client: httpx.AsyncClient, data: bytes, clock: ManualClock | None = None, **fields: Any
) -> dict[str, Any]:
    """Reserve, transfer, complete and (with a clock) wait until ready; the final GET."""
    reserved = await create_asset(client, "signed-url", **fields)
    assert reserved.status_code == 201, reserved.text
    asset_id = reserved.json()["asset_id"]
    stored = await send_to_storage(client, reserved.json()["upload"], data)
    assert stored.status_code == 204, stored.text
    done = await client.post(f"/assets/{asset_id}/complete")
    assert done.status_code == 200, done.text
    if clock is not None:
        clock.advance(60)
    body: dict[str, Any] = (await client.get(f"/assets/{asset_id}")).json()
    return body

"""Helpers shared by the emulator tests: an in-process client and valid create bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from flora_batch.emulator import DEFAULT_API_KEY, Emulator, ManualClock

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

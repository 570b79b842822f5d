"""Outputs are real files: decodable PNG and video, deterministic, fast, and can expire."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from emulator_helpers import client_for, create, finish
from PIL import Image

from flora_batch.emulator import Emulator, ManualClock, load_catalog
from flora_batch.emulator.media import HAVE_AV, plan_outputs, render_bytes
from flora_batch.types import RunInput


async def _outputs(
    client: httpx.AsyncClient, clock: ManualClock, technique: str, **kw: Any
) -> list[dict[str, Any]]:
    run_id = (await create(client, technique, **kw)).json()["run_id"]
    outputs: list[dict[str, Any]] = (await finish(client, clock, run_id))["outputs"]
    return outputs


async def test_image_outputs_are_png_with_headers(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Six icon PNGs: right Content-Type and Content-Length, decodable, 256 px, no auth needed."""
    outputs = await _outputs(client, clock, "icon-pack")
    assert [o["output_id"] for o in outputs] == [f"output_{n}" for n in range(1, 7)]
    async with httpx.AsyncClient(transport=client._transport) as anonymous:
        r = await anonymous.get(outputs[0]["url"])
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert int(r.headers["content-length"]) == len(r.content)
    image = Image.open(io.BytesIO(r.content))
    image.verify()
    assert image.format == "PNG" and image.size == (256, 256)


async def test_outputs_are_deterministic_and_distinct(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """Same inputs give the same bytes on any emulator; other inputs or outputs differ."""
    contents = []
    for prompt in ("cats", "cats", "dogs"):
        emu = make_emu()
        async with client_for(emu) as c:
            outputs = await _outputs(c, clock, "icon-pack", prompt=prompt)
            contents.append([(await c.get(o["url"])).content for o in outputs[:2]])
    assert contents[0] == contents[1]
    assert contents[0] != contents[2]
    assert contents[0][0] != contents[0][1]


async def test_aspect_ratio_shapes_the_image(client: httpx.AsyncClient, clock: ManualClock) -> None:
    """``quick-reframe`` draws at the aspect ratio the row asked for."""
    outputs = await _outputs(client, clock, "quick-reframe", aspect_ratio="9:16")
    image = Image.open(io.BytesIO((await client.get(outputs[0]["url"])).content))
    assert image.size == (144, 256)


async def test_video_output_is_a_real_video(client: httpx.AsyncClient, clock: ManualClock) -> None:
    """``product-animator`` returns an MP4 (H.264) with 12 frames, or an honest GIF without PyAV."""
    outputs = await _outputs(client, clock, "product-animator")
    assert outputs[0]["type"] == "videoUrl"
    r = await client.get(outputs[0]["url"])
    if HAVE_AV:
        import av

        assert r.headers["content-type"] == "video/mp4" and outputs[0]["url"].endswith(".mp4")
        with av.open(io.BytesIO(r.content), mode="r") as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            frames = list(container.decode(video=0))
        assert len(frames) == 12 and frames[0].width == 128
    else:  # pragma: no cover - only where PyAV is missing
        assert r.headers["content-type"] == "image/gif"
        assert getattr(Image.open(io.BytesIO(r.content)), "n_frames", 1) == 12


async def test_text_outputs_carry_text_in_url(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """``palette-pull`` returns its palette as text in ``url``; nothing to download."""
    outputs = await _outputs(client, clock, "palette-pull")
    assert outputs == [{"output_id": "output_1", "type": "text", "url": outputs[0]["url"]}]
    colours = outputs[0]["url"].split(", ")
    assert len(colours) == 5 and all(c.startswith("#") and len(c) == 7 for c in colours)


def test_every_output_of_every_technique_renders() -> None:
    """Every output of every technique renders to bytes (speed belongs in the benchmarks)."""
    inputs = (
        RunInput("prompt", "text", "a long prompt " * 20),
        RunInput("image", "imageUrl", "https://media.flora.ai/x.png"),
    )
    for technique in load_catalog().techniques:
        for spec in plan_outputs(technique):
            assert render_bytes(technique, spec, inputs)


async def test_media_bytes_are_cached_and_recorded(
    emu: Emulator, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """``served_media`` holds the sha256 of each fully served file; bytes are cached."""
    outputs = await _outputs(client, clock, "cctv-cam")
    run_id = next(iter(emu.runs))
    first = (await client.get(outputs[0]["url"])).content
    second = (await client.get(outputs[0]["url"])).content
    assert first == second
    assert emu.served_media == {(run_id, "output_1"): hashlib.sha256(first).hexdigest()}
    assert (run_id, "output_1") in emu.media_cache


async def test_media_of_unfinished_or_unknown_runs_is_404(
    emu: Emulator, client: httpx.AsyncClient
) -> None:
    """No file before completion, for a bad name, or for an unknown run."""
    run_id = (await create(client)).json()["run_id"]
    for path in (
        f"{run_id}/output_1.png",
        f"{run_id}/output_9.png",
        f"{run_id}/output_1.gif",
        "run_x/output_1.png",
    ):
        assert (await client.get(f"http://testserver/_media/{path}")).status_code == 404


async def test_media_urls_expire_and_repolls_refresh_them(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """With ``media_ttl`` an old URL answers 403; a new poll hands out a working one."""
    emu = make_emu(media_ttl=60)
    async with client_for(emu) as c:
        run_id = (await create(c)).json()["run_id"]
        old = (await finish(c, clock, run_id))["outputs"][0]["url"]
        assert "token=" in old
        assert (await c.get(old)).status_code == 200
        clock.advance(60)
        expired = await c.get(old)
        fresh = (await c.get(f"/runs/{run_id}")).json()["outputs"][0]["url"]
        assert fresh != old
        assert (await c.get(fresh)).status_code == 200
        unsigned = await c.get(old.split("?")[0])
        forged = await c.get(old.replace("token=", "token=1"))
    assert expired.status_code == 403
    assert expired.json()["error"]["code"] == "forbidden"
    assert unsigned.status_code == 403 and forged.status_code == 403


@pytest.mark.parametrize("technique", ["book-drop", "tarot-pull", "art-directors-critique"])
async def test_mixed_outputs(client: httpx.AsyncClient, clock: ManualClock, technique: str) -> None:
    """Techniques with several output slots list every output with its own type."""
    t = load_catalog().get(technique)
    assert t is not None
    expected = [s.type for s in t.outputs for _ in range(s.count)]
    run_id = (
        await client.post(f"/techniques/{technique}/runs", json=_minimal_body(technique))
    ).json()["run_id"]
    outputs = (await finish(client, clock, run_id))["outputs"]
    assert [o["type"] for o in outputs] == expected


def _minimal_body(slug: str) -> dict[str, Any]:
    t = load_catalog().get(slug)
    assert t is not None
    values = {"text": "something", "imageUrl": "https://media.flora.ai/in.png"}
    inputs = [
        {"id": s.id, "type": s.type, "value": values[s.type]} for s in t.inputs if not s.optional
    ]
    return {"inputs": inputs, "mode": "async"}


async def test_gif_fallback_without_pyav(
    monkeypatch: pytest.MonkeyPatch, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    """Where PyAV is missing, videos are animated GIFs, declared honestly as ``image/gif``."""
    from flora_batch.emulator import media

    monkeypatch.setattr(media, "HAVE_AV", False)
    outputs = await _outputs(client, clock, "product-animator")
    assert outputs[0]["url"].endswith(".gif")
    r = await client.get(outputs[0]["url"])
    assert r.headers["content-type"] == "image/gif"
    gif = Image.open(io.BytesIO(r.content))
    assert gif.format == "GIF" and getattr(gif, "n_frames", 1) == 12

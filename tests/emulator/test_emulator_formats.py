"""SVG, AVIF and HEIC outputs (the catalog's extras), and ``media_quirks``: an XML prolog on
SVGs, AVIF and HEIC sent as ``application/octet-stream``."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from emulator_helpers import client_for, create, finish
from PIL import Image

from flora_batch.emulator import Emulator, ManualClock
from flora_batch.emulator.media import HAVE_AVIF, XML_PROLOG

needs_avif = pytest.mark.skipif(not HAVE_AVIF, reason="this Pillow cannot write AVIF")


async def _files(
    emu: Emulator, clock: ManualClock, technique: str
) -> list[tuple[dict[str, Any], httpx.Response]]:
    """The outputs of one finished run of ``technique``, each with its download."""
    async with client_for(emu) as c:
        run_id = (await create(c, technique)).json()["run_id"]
        outputs = (await finish(c, clock, run_id))["outputs"]
        return [(o, await c.get(o["url"])) for o in outputs]


async def test_vector_icons_are_three_svg_files(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """``vector-icons``: three ``.svg`` outputs, ``image/svg+xml``, starting with ``<svg``."""
    files = await _files(make_emu(), clock, "vector-icons")
    assert len(files) == 3
    for output, r in files:
        assert output["type"] == "imageUrl" and output["url"].endswith(".svg")
        assert r.headers["content-type"] == "image/svg+xml"
        assert r.content.startswith(b"<svg ")
        root = ET.fromstring(r.content)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert "Vector Icons" in r.text


async def test_media_quirks_puts_an_xml_prolog_before_the_svg(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """With ``media_quirks`` the SVG starts ``<?xml version="1.0" encoding="UTF-8"?>``, then
    the same ``<svg>``; still valid XML."""
    plain = await _files(make_emu(), clock, "vector-icons")
    quirky = await _files(make_emu(media_quirks=True), clock, "vector-icons")
    for (_, a), (_, b) in zip(plain, quirky, strict=True):
        assert b.content == XML_PROLOG + a.content
        assert b.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
        assert b.headers["content-type"] == "image/svg+xml"
        ET.fromstring(b.content)


@needs_avif
@pytest.mark.parametrize(
    ("technique", "ext", "content_type", "brand"),
    [
        ("web-stills", ".avif", "image/avif", b"avif"),
        ("phone-snap", ".heic", "image/heic", b"heic"),
    ],
)
async def test_avif_and_heic_outputs(
    make_emu: Callable[..., Emulator],
    clock: ManualClock,
    technique: str,
    ext: str,
    content_type: str,
    brand: bytes,
) -> None:
    """``web-stills`` gives AVIF, ``phone-snap`` HEIC: an ISO-BMFF ``ftyp`` box with that
    brand, under their own type; ``media_quirks`` sends the same bytes as octet-stream."""
    [(output, plain)] = await _files(make_emu(), clock, technique)
    [(_, quirky)] = await _files(make_emu(media_quirks=True), clock, technique)
    assert output["url"].endswith(ext)
    assert plain.headers["content-type"] == content_type
    assert plain.content[4:12] == b"ftyp" + brand
    assert quirky.headers["content-type"] == "application/octet-stream"
    assert quirky.content == plain.content


@needs_avif
async def test_avif_outputs_decode_at_the_slot_aspect_ratio(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """The AVIF still is a real picture, 4:5 as its slot says."""
    [(_, r)] = await _files(make_emu(), clock, "web-stills")
    image = Image.open(io.BytesIO(r.content))
    image.load()
    assert image.format == "AVIF" and image.size == (204, 256)


async def test_media_quirks_leave_png_outputs_alone(
    make_emu: Callable[..., Emulator], clock: ManualClock
) -> None:
    """PNG outputs of the seed techniques are unchanged under ``media_quirks``."""
    [(_, plain)] = await _files(make_emu(), clock, "cctv-cam")
    [(_, quirky)] = await _files(make_emu(media_quirks=True), clock, "cctv-cam")
    assert quirky.headers["content-type"] == "image/png" == plain.headers["content-type"]
    assert quirky.content == plain.content

"""A whole batch (in-process, through ``ASGITransport``) against an emulator whose media are
quirky (``media_quirks``): SVGs with an XML prolog, AVIF and HEIC as octet-stream."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from support import fast_settings, run_once

from flora_batch import retrying
from flora_batch.emulator import Emulator, EmulatorConfig
from flora_batch.emulator.media import HAVE_AVIF, XML_PROLOG
from flora_batch.types import JobState

pytestmark = pytest.mark.skipif(not HAVE_AVIF, reason="this Pillow cannot write AVIF")

ROWS = "sku,title,image_url\nA-1,weather,https://media.flora.ai/p/a.jpg\n"


def write_batch(folder: Path) -> Path:
    """One row through the three techniques whose outputs are SVG, AVIF and HEIC."""
    folder.mkdir(parents=True)
    (folder / "rows.csv").write_text(ROWS)
    manifest = folder / "formats.yaml"
    manifest.write_text(
        "name: formats\n"
        "techniques:\n"
        "  - technique: vector-icons\n"
        '    inputs: {prompt: "{title} icons"}\n'
        "  - technique: web-stills\n"
        '    inputs: {product: "{image_url}"}\n'
        "  - technique: phone-snap\n"
        '    inputs: {product: "{image_url}"}\n'
        "rows: rows.csv\n"
        "id: sku\n"
        "output:\n"
        "  dir: results\n"
        '  name: "{sku}/{technique}-{output_id}{ext}"\n'
    )
    return manifest


async def _run(tmp_path: Path) -> tuple[Emulator, Path]:
    emu = Emulator(EmulatorConfig(speed=1000.0, media_quirks=True))
    manifest = write_batch(tmp_path / "b")
    with retrying.set_testing():
        result = await run_once(manifest, fast_settings(emu), httpx.ASGITransport(app=emu.app))
    assert result.outcome.counts[JobState.DONE] == 3, result.outcome
    return emu, tmp_path / "b" / "results" / "A-1"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_quirky_svg_avif_and_heic_outputs_are_all_saved(tmp_path: Path) -> None:
    """The prolog'd SVGs are saved as ``.svg``; AVIF and HEIC sent as octet-stream are kept,
    byte for byte what the emulator served."""
    emu, folder = await _run(tmp_path)
    files = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".json"))
    svgs = [n for n in files if n.startswith("vector-icons-")]
    assert svgs == [f"vector-icons-output_{n}.svg" for n in (1, 2, 3)]
    assert (folder / svgs[0]).read_bytes().startswith(XML_PROLOG + b"<svg ")
    stills = [n for n in files if not n.startswith("vector-icons-")]
    assert [n.rsplit(".", 1)[0] for n in stills] == ["phone-snap-output_1", "web-stills-output_1"]
    saved = {_sha(folder / n) for n in files}
    assert saved == set(emu.served_media.values()) and len(saved) == 5
    assert (folder / stills[0]).read_bytes()[4:12] == b"ftypheic"
    assert (folder / stills[1]).read_bytes()[4:12] == b"ftypavif"


async def test_avif_and_heic_sent_as_octet_stream_get_their_own_extension(
    tmp_path: Path,
) -> None:
    """AVIF and HEIC sent as octet-stream are saved as ``.avif`` and ``.heic``."""
    _, folder = await _run(tmp_path)
    names = {p.name for p in folder.iterdir()}
    assert {"web-stills-output_1.avif", "phone-snap-output_1.heic"} <= names

"""The catalog: the seed document's 38 techniques, with plausible slots, costs and times,
then the emulator's own extras (SVG, AVIF and HEIC outputs)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from flora_batch.emulator import load_catalog
from flora_batch.types import RUN_INPUT_TYPES, SLOT_TYPES

SEED = Path(__file__).parents[2].parent / "shared" / "flora-api" / "seed-flora-api.txt"


def _seed_techniques() -> list[tuple[str, str, str]]:
    lines = [line.strip() for line in SEED.read_text(encoding="utf-8").splitlines()]
    start = lines.index("Available techniques") + 1
    end = lines.index("Step 3: Look up a technique's inputs")
    chunk = lines[start:end]
    return [(chunk[i], chunk[i + 1], chunk[i + 2]) for i in range(0, len(chunk), 3)]


@pytest.mark.skipif(not SEED.exists(), reason=f"seed document not found at {SEED}")
def test_catalog_matches_the_seed_document() -> None:
    """Every technique of the seed doc is there, in order, with its slug, name and description."""
    ours = [(t.slug, t.name, t.description) for t in load_catalog().seed]
    assert ours == _seed_techniques()


def test_catalog_has_38_seed_techniques_then_3_extras() -> None:
    """38 seed techniques first, then 3 extras; unique slugs, ids of the form tech_<slug>."""
    catalog = load_catalog()
    assert len(catalog.seed) == 38 and len(catalog) == 41
    assert catalog.techniques[:38] == catalog.seed
    assert [t.slug for t in catalog.techniques[38:]] == ["vector-icons", "web-stills", "phone-snap"]
    assert len({t.slug for t in catalog.techniques}) == 41
    assert all(t.technique_id == f"tech_{t.slug}" for t in catalog.techniques)


def test_catalog_is_a_data_file_inside_the_package() -> None:
    """The catalog is shipped as JSON next to the code, so the wheel carries it."""
    text = resources.files("flora_batch.emulator").joinpath("catalog.json").read_text()
    assert len(json.loads(text)["techniques"]) == 41


def test_every_technique_is_plausible() -> None:
    """Slots are well formed, costs are 0.04-0.60 USD, videos take minutes, images less."""
    for t in load_catalog().techniques:
        assert t.inputs and t.outputs, t.slug
        assert 0.04 <= t.run_cost <= 0.60, t.slug
        assert any(not s.optional for s in t.inputs), t.slug
        assert all(s.type in RUN_INPUT_TYPES for s in t.inputs), t.slug
        assert all(s.type in SLOT_TYPES for s in t.outputs), t.slug
        assert len({s.id for s in t.inputs}) == len(t.inputs), t.slug
        if t.is_video:
            assert t.typical_seconds >= 120, t.slug
        else:
            assert 10 <= t.typical_seconds <= 90, t.slug
        for slot in (*t.inputs, *t.outputs):
            ratio = slot.specified_aspect_ratio
            assert ratio is None or re.fullmatch(r"\d+:\d+", ratio), (t.slug, ratio)


@pytest.mark.parametrize(
    ("slug", "inputs", "outputs"),
    [
        ("product-animator", ["imageUrl", "text"], ["videoUrl"]),
        ("icon-pack", ["text", "text"], ["imageUrl"] * 6),
        ("palette-pull", ["imageUrl"], ["text"]),
        ("seamless-transition", ["imageUrl", "imageUrl", "text"], ["videoUrl"]),
        ("quick-reframe", ["imageUrl", "text"], ["imageUrl"]),
    ],
)
def test_techniques_take_and_give_what_they_say(
    slug: str, inputs: list[str], outputs: list[str]
) -> None:
    """A few techniques whose shape the brief names explicitly."""
    t = load_catalog().get(slug)
    assert t is not None
    assert [s.type for s in t.inputs] == inputs
    assert [s.type for s in t.outputs for _ in range(s.count)] == outputs


def test_optional_inputs_are_marked() -> None:
    """Optional inputs say so; required ones carry no flag."""
    t = load_catalog().get("icon-pack")
    assert t is not None
    assert {s.id: s.optional for s in t.inputs} == {"prompt": False, "style": True}


def test_lookup_by_slug_or_id_and_search() -> None:
    """``tech_<slug>`` and the bare slug find the same technique; search filters by words."""
    catalog = load_catalog()
    assert catalog.get("tech_cctv-cam") is catalog.get("cctv-cam")
    assert catalog.get("nope") is None
    assert [t.slug for t in catalog.search("logo")] == ["logo-stylist"]

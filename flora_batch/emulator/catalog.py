"""The technique catalog: ``catalog.json`` (shipped in the package) read into frozen values.

The data lives in a JSON file rather than code so that adding or tuning a technique is
an edit of data, and so the same file can be read by tools that are not Python.  Slots
carry a few emulator-only keys (``pattern``, ``count``, ``aspect_from``, ``format``) that
are used to validate inputs and shape outputs but are never sent on the wire
(``render.py``).

The first 38 techniques are FLORA's seed document's; those marked ``extra`` are the
emulator's own, there so clients meet the file formats FLORA may send besides PNG and
MP4 (``vector-icons``: SVG, ``web-stills``: AVIF, ``phone-snap``: HEIC).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

CATALOG_FILE = "catalog.json"


@dataclass(frozen=True, slots=True)
class SlotDef:
    """One input or output slot of a technique, as the catalog declares it."""

    id: str
    name: str
    type: str
    description: str = ""
    optional: bool = False
    specified_aspect_ratio: str | None = None
    specified_duration: float | None = None
    pattern: str | None = None  # text inputs: the value must match this regex
    count: int = 1  # outputs: how many run outputs this slot produces
    aspect_from: str | None = None  # outputs: the text input that holds the aspect ratio
    format: str | None = None  # image outputs: "svg", "avif" or "heic" (None: PNG)

    @property
    def is_media(self) -> bool:
        """Whether the slot holds a URL rather than text."""
        return self.type != "text"


@dataclass(frozen=True, slots=True)
class TechniqueDef:
    """A technique the emulator can run: what it takes, what it gives, cost and run time."""

    slug: str
    name: str
    description: str
    run_cost: float  # USD per run
    typical_seconds: float  # real-world run time before the emulator's speed factor
    inputs: tuple[SlotDef, ...]
    outputs: tuple[SlotDef, ...]
    extra: bool = False  # the emulator's own, not one of the seed document's

    @property
    def technique_id(self) -> str:
        """The ``tech_<slug>`` identifier, as in the OpenAPI examples."""
        return f"tech_{self.slug}"

    def input(self, slot_id: str) -> SlotDef | None:
        """The input slot with this id, if any."""
        return next((s for s in self.inputs if s.id == slot_id), None)

    @property
    def is_video(self) -> bool:
        """Whether any output is a video (used for realistic queue times)."""
        return any(s.type == "videoUrl" for s in self.outputs)


def _slot(data: dict[str, Any]) -> SlotDef:
    return SlotDef(**data)


def _technique(data: dict[str, Any]) -> TechniqueDef:
    return TechniqueDef(
        slug=data["slug"],
        name=data["name"],
        description=data["description"],
        run_cost=float(data["run_cost"]),
        typical_seconds=float(data["typical_seconds"]),
        inputs=tuple(_slot(s) for s in data["inputs"]),
        outputs=tuple(_slot(s) for s in data["outputs"]),
        extra=bool(data.get("extra", False)),
    )


class Catalog:
    """The techniques in catalog order, found by slug or by ``tech_<slug>`` id."""

    def __init__(self, techniques: tuple[TechniqueDef, ...]) -> None:
        self.techniques = techniques
        self._by_slug = {t.slug: t for t in techniques}

    def get(self, ref: str) -> TechniqueDef | None:
        """The technique named by slug or id (``cctv-cam`` or ``tech_cctv-cam``)."""
        return self._by_slug.get(ref) or self._by_slug.get(ref.removeprefix("tech_"))

    def search(self, query: str | None) -> tuple[TechniqueDef, ...]:
        """Techniques whose slug, name or description contains every word of ``query``."""
        words = (query or "").lower().split()
        if not words:
            return self.techniques
        return tuple(
            t
            for t in self.techniques
            if all(w in f"{t.slug} {t.name} {t.description}".lower() for w in words)
        )

    @property
    def seed(self) -> tuple[TechniqueDef, ...]:
        """The seed document's techniques, in its order (the catalog without extras)."""
        return tuple(t for t in self.techniques if not t.extra)

    def __len__(self) -> int:
        return len(self.techniques)


@cache
def load_catalog() -> Catalog:
    """The shipped catalog, read once per process."""
    text = resources.files(__package__).joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    return Catalog(tuple(_technique(t) for t in data["techniques"]))

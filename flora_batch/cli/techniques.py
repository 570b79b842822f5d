"""What ``flora-batch techniques`` shows: the catalog, one technique's schema, as text or JSON.

The list comes from FLORA's list endpoint; when that answers 404 (some deployments do
not offer it) the 38 techniques of FLORA's seed document, shipped as
``flora_batch/data/techniques.json``, stand in, without costs.  A technique's inputs,
outputs and cost always come from ``GET /techniques/{slug}``.

Everything here but ``list_techniques`` and ``seed_techniques`` is a pure function of a
``Technique``: the JSON shape (``technique_dict``) and the text lines (``show_lines``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from ..errors import NotFound
from ..manifest import send_type
from ..types import IOSlot, Technique, money

SEED_FILE = "data/techniques.json"
#: The input media hosts FLORA accepts (CONTRACT.md §9; ``wire.DEFAULT_ALLOWED_HOSTS``).
ALLOWED_HOSTS_TEXT = (
    "https:// on media.flora.ai, storage.googleapis.com (Google Cloud Storage), "
    "Amazon S3 or ik.imagekit.io"
)


@dataclass(frozen=True, slots=True)
class Listing:
    """One line of the technique list; ``run_cost`` is None when only the seed list answered."""

    slug: str
    name: str
    description: str
    run_cost: float | None = None
    cost_unit: str = "usd"

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of one listed technique."""
        return {
            "slug": self.slug,
            "name": self.name,
            "description": self.description,
            "run_cost": self.run_cost,
            "cost_unit": self.cost_unit if self.run_cost is not None else None,
        }


def seed_techniques() -> list[Listing]:
    """The 38 techniques of FLORA's seed document, from the package's data file."""
    text = resources.files("flora_batch").joinpath(SEED_FILE).read_text(encoding="utf-8")
    return [Listing(t["slug"], t["name"], t["description"]) for t in json.loads(text)["techniques"]]


class Lister(Protocol):
    """What ``list_techniques`` needs of a client (``FloraClient`` has it)."""

    async def list_techniques(self) -> list[Technique]:
        """Every technique, from the list endpoint."""
        ...


async def list_techniques(client: Lister) -> tuple[list[Listing], bool]:
    """Every technique and whether it came from the seed list (the list endpoint said 404)."""
    try:
        found = await client.list_techniques()
    except NotFound:
        return seed_techniques(), True
    return [Listing(t.slug, t.name, t.description, t.run_cost, t.cost_unit) for t in found], False


def list_lines(items: list[Listing], *, from_seed: bool) -> list[str]:
    """The technique list as aligned text lines."""
    width = max((len(t.slug) for t in items), default=10)
    lines = [
        f"{t.slug:{width}}  "
        f"{money(t.run_cost, t.cost_unit) if t.run_cost is not None else '?':>10}  {t.name}"
        for t in items
    ]
    if from_seed:
        lines.append(
            "(FLORA's list endpoint answered 404: these are the techniques of FLORA's seed "
            "document; `flora-batch techniques show SLUG` gives each one's cost)"
        )
    return lines


def constraints(slot: IOSlot) -> list[str]:
    """What a value for this input must be, in words (required, aspect ratio, hosts...)."""
    notes = ["optional" if slot.optional else "required"]
    if slot.aspect_ratio:
        notes.append(f"aspect ratio {slot.aspect_ratio}")
    if slot.duration:
        notes.append(f"duration {slot.duration:g} s")
    if send_type(slot) is None:
        notes.append("cannot be sent: FLORA's create endpoint takes text, imageUrl, videoUrl")
    elif slot.is_media:
        notes.append(ALLOWED_HOSTS_TEXT)
    else:
        notes.append("text, at most 10,000 characters")
    return notes


def _slot_dict(slot: IOSlot, *, is_input: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": slot.id,
        "name": slot.name,
        "type": slot.type,
        "description": slot.description,
        "aspect_ratio": slot.aspect_ratio,
        "duration": slot.duration,
    }
    if is_input:
        data["required"] = not slot.optional
        data["sendable"] = send_type(slot) is not None
        data["constraints"] = constraints(slot)
    return data


def technique_dict(t: Technique) -> dict[str, Any]:
    """One technique as plain JSON values (no reprs)."""
    return {
        "slug": t.slug,
        "technique_id": t.technique_id,
        "name": t.name,
        "description": t.description,
        "run_cost": t.run_cost,
        "cost_unit": t.cost_unit,
        "inputs": [_slot_dict(s, is_input=True) for s in t.inputs],
        "outputs": [_slot_dict(s, is_input=False) for s in t.outputs],
    }


def show_lines(t: Technique) -> list[str]:
    """A technique's inputs, outputs and cost per run, as text lines."""
    lines = [f"{t.name} ({t.slug}): {money(t.run_cost, t.cost_unit)} per run"]
    if t.description:
        lines.append(t.description)
    lines += ["", "Inputs:"]
    width = max((len(s.id) for s in (*t.inputs, *t.outputs)), default=8)
    for s in t.inputs:
        lines.append(f"  {s.id:{width}}  {s.type:11} {'; '.join(constraints(s))}")
        if s.description:
            lines.append(f"  {'':{width}}  {'':11} {s.description}")
    lines += ["", "Outputs:"]
    for s in t.outputs:
        extra = f" (aspect ratio {s.aspect_ratio})" if s.aspect_ratio else ""
        lines.append(f"  {s.id:{width}}  {s.type:11} {s.description}{extra}")
    return lines

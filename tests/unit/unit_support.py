"""Test data and helpers for the pure-module tests (imported by conftest and the tests)."""

from __future__ import annotations

from pathlib import Path

from flora_batch.errors import ManifestError, ManifestProblems
from flora_batch.types import IOSlot, JobSpec, RunInput, Technique


def technique(
    slug: str, cost: float, inputs: tuple[IOSlot, ...], outputs: tuple[IOSlot, ...]
) -> Technique:
    """A technique schema as ``wire.parse_technique`` would give it."""
    return Technique(
        slug=slug,
        technique_id=f"tech_{slug}",
        name=slug,
        run_cost=cost,
        inputs=inputs,
        outputs=outputs,
    )


CATALOG: dict[str, Technique] = {
    t.slug: t
    for t in (
        technique(
            "studio-shot",
            0.06,
            (IOSlot("product", "imageUrl"), IOSlot("backdrop", "text", optional=True)),
            (IOSlot("shot", "imageUrl"),),
        ),
        technique(
            "product-animator",
            0.40,
            (IOSlot("product", "imageUrl"), IOSlot("motion", "text", optional=True)),
            (IOSlot("animation", "videoUrl"),),
        ),
        technique(
            "palette-pull", 0.04, (IOSlot("image", "imageUrl"),), (IOSlot("palette", "text"),)
        ),
        technique(
            "voice-over",
            0.10,
            (IOSlot("script", "text"), IOSlot("voice", "audioUrl", optional=True)),
            (IOSlot("audio", "audioUrl"),),
        ),
        technique(
            "doc-reader", 0.02, (IOSlot("document", "documentUrl"),), (IOSlot("text", "text"),)
        ),
        technique(
            "mood",
            0.01,
            (IOSlot("hint", "text", optional=True), IOSlot("photo", "image_url", optional=True)),
            (IOSlot("board", "imageUrl"), IOSlot("notes", "text")),
        ),
    )
}

PRODUCTS_CSV = """\
sku,title,image_url,colour
A1,Mug,https://media.flora.ai/p/a1.jpg,peach
B2,Lamp,https://media.flora.ai/p/b2.jpg,
C3,Tote,https://media.flora.ai/p/c3.jpg,sand
"""

MANIFEST = """\
name: spring
technique: studio-shot
rows: products.csv
id: sku
inputs:
  product: "{image_url}"
  backdrop: "{colour} paper"
output:
  dir: out
  name: "{sku}/{technique}-{output_id}{ext}"
max_cost: 5
"""


def problems_of(exc: ManifestError) -> list[ManifestError]:
    """The individual problems inside a ManifestError or ManifestProblems."""
    return list(exc.problems) if isinstance(exc, ManifestProblems) else [exc]


def located(errors: list[ManifestError], root: Path) -> list[str]:
    """Errors as ``file:line[:column]: message`` with the tmp folder taken off."""
    return [str(e).replace(f"{root}/", "") for e in errors]


def make_spec(
    inputs: tuple[tuple[str, str, str], ...] = (
        ("product", "imageUrl", "https://media.flora.ai/x.png"),
    ),
    **fields: object,
) -> JobSpec:
    """A JobSpec with sensible defaults; ``inputs`` as (id, type, value) triples."""
    base: dict[str, object] = {
        "batch": "spring",
        "technique": "studio-shot",
        "inputs": tuple(RunInput(*i) for i in inputs),
        "row_index": 0,
    }
    base.update(fields)
    return JobSpec(**base)  # type: ignore[arg-type]

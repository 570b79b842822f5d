"""Batches for the toolbox tests: manifests over small CSVs, run through the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from e2e_helpers import FAST, CliResult, cli_env

PRODUCTS = [
    {"sku": "SKU-007", "title": "Speckled mug", "image_url": "https://media.flora.ai/t/mug.jpg"},
    {"sku": "SKU-002", "title": "<script>alert(1)</script> lamp", "image_url": "https://media.flora.ai/t/lamp.jpg"},
    {"sku": "SKU-005", "title": '=HYPERLINK("http://evil.example","x")', "image_url": "https://media.flora.ai/t/bag.jpg"},
    {"sku": "SKU-001", "title": "+1 desk chair", "image_url": "https://media.flora.ai/t/chair.jpg"},
    {"sku": "SKU-009", "title": "@tote & <b>bold</b>", "image_url": "https://media.flora.ai/t/tote.jpg"},
    {"sku": "SKU-003", "title": "-20% sneaker", "image_url": "https://media.flora.ai/t/shoe.jpg"},
]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    """A CSV with the rows' keys as header."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_batch(folder: Path, *, name: str = "shop", rows: list[dict[str, str]] | None = None,
                techniques: str = "studio-shot", extra: str = "") -> Path:
    """A manifest over products: studio-shot by default, or a ``techniques:`` block."""
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "products.csv", rows or PRODUCTS)
    uses = {
        "studio-shot": 'technique: studio-shot\ninputs:\n  product: "{image_url}"\n'
        '  backdrop: "seamless paper behind {title}"\n',
        "showcase": "techniques:\n"
        '  - technique: studio-shot\n    inputs:\n      product: "{image_url}"\n'
        "  - technique: palette-pull\n    inputs:\n      image: \"{image_url}\"\n"
        '  - technique: product-motion\n    inputs:\n      product: "{image_url}"\n',
    }[techniques]
    manifest = folder / f"{name}.yaml"
    manifest.write_text(
        f"name: {name}\nrows: products.csv\nid: sku\n{uses}"
        'output:\n  dir: results\n  name: "{sku}/{technique}-{output_id}{ext}"\n' + extra
    )
    return manifest


def env(tmp: Path, server: Any | None = None, **extra: str) -> dict[str, str]:
    """The user's environment with an empty config folder (never the developer's config)."""
    config_home = tmp / "xdg"
    config_home.mkdir(exist_ok=True)
    return cli_env(server, XDG_CONFIG_HOME=str(config_home), **extra)


def run_batch(run_cli: Any, manifest: Path, server: Any, *flags: str) -> CliResult:
    """``flora-batch run MANIFEST`` against ``server``, fast."""
    return run_cli("run", str(manifest), *FAST, *flags, env=env(manifest.parent, server))


def creates(server: Any) -> int:
    """Create requests the emulator received."""
    counts = server.emulator.request_counts
    return sum(v for k, v in counts.items() if k.startswith("POST") and "runs" in k)


def as_json(result: CliResult) -> Any:
    """The command's stdout parsed as JSON (with its output on failure)."""
    try:
        return json.loads(result.out)
    except ValueError as exc:
        raise AssertionError(f"not JSON (exit {result.code}): {result.text}") from exc

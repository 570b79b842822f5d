"""Batches whose inputs are local files and web images, and what the emulator saw of them."""

from __future__ import annotations

import csv
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e_helpers import FAST, CliResult, cli_env
from PIL import Image

DIRECT_LIMIT = 4 * 1024 * 1024
WEB = ("https://example.com/photos/lamp.jpg", "https://example.com/photos/chair.png")
HOSTED = "https://media.flora.ai/demo/mug.jpg"  # on FLORA's input hosts: sent untouched


@dataclass
class Batch:
    """A batch on disk: its manifest, and the distinct things its rows upload."""

    folder: Path
    manifest: Path
    files: dict[str, str]  # name in the rows -> sha256 of the local file
    web: tuple[str, ...]

    @property
    def uploads(self) -> int:
        """How many assets the batch should make: one per distinct file and web image."""
        return len(set(self.files.values())) + len(set(self.web))


def image(path: Path, *, size: tuple[int, int] = (96, 64), seed: int = 0, fmt: str = "PNG",
          noise: bool = False) -> str:
    """Write an image; ``noise`` makes it incompressible (a big PNG stays big). Its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if noise:
        data = random.Random(seed).randbytes(size[0] * size[1] * 3)
        picture = Image.frombytes("RGB", size, data)
    else:
        picture = Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, 120))
    picture.save(path, format=fmt)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def big_png(path: Path) -> str:
    """A PNG of random noise, larger than the 4 MiB direct-upload limit."""
    digest = image(path, size=(1400, 1100), seed=7, noise=True)
    assert path.stat().st_size > DIRECT_LIMIT
    return digest


def write_rows(path: Path, rows: Sequence[dict[str, str]]) -> Path:
    """A CSV with the rows' keys as its header."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def manifest(folder: Path, *, techniques: Sequence[str] = ("studio-shot",), name: str = "pics",
             assets: str | None = "ws_emulator", extra: str = "") -> Path:
    """A manifest over rows.csv: every technique takes ``{image}`` as its image input."""
    inputs = {"studio-shot": "product", "palette-pull": "image", "product-motion": "product"}
    uses = "".join(
        f"  - technique: {t}\n    inputs:\n      {inputs[t]}: \"{{image}}\"\n" for t in techniques
    )
    block = f"assets:\n  workspace_id: {assets}\n  folder: batch-inputs\n" if assets else ""
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nrows: rows.csv\nid: sku\ntechniques:\n{uses}{block}"
        'output:\n  dir: results\n  name: "{sku}/{technique}-{output_id}{ext}"\n' + extra
    )
    return path


def mixed_batch(folder: Path, *, techniques: Sequence[str] = ("studio-shot",),
                assets: str | None = "ws_emulator") -> Batch:
    """Shared small images, one image over 4 MiB, a JPEG by absolute path and file:// URL,
    two web images (one used twice) and one image already on FLORA's hosts."""
    img = folder / "img"
    files = {
        "img/red.png": image(img / "red.png", seed=1),
        "img/blue.png": image(img / "blue.png", seed=2),
        "img/huge.png": big_png(img / "huge.png"),
        "photo.jpg": image(folder / "photo.jpg", seed=3, fmt="JPEG"),
    }
    cells = [
        ("A", "img/red.png"), ("B", "img/red.png"), ("C", "img/blue.png"),
        ("D", "img/huge.png"), ("E", str(folder / "photo.jpg")),
        ("F", (folder / "photo.jpg").as_uri()), ("G", "./img/red.png"),
        ("H", WEB[0]), ("I", WEB[1]), ("J", WEB[0]), ("K", HOSTED),
    ]
    write_rows(folder / "rows.csv", [{"sku": sku, "image": cell} for sku, cell in cells])
    return Batch(folder, manifest(folder, techniques=techniques, assets=assets), files, WEB)


def env(folder: Path, server: Any | None = None, **extra: str) -> dict[str, str]:
    """The user's environment, with an empty config folder."""
    config_home = folder / "xdg"
    config_home.mkdir(exist_ok=True)
    return cli_env(server, XDG_CONFIG_HOME=str(config_home), **extra)


def run(run_cli: Any, manifest_path: Path, server: Any, *flags: str, **extra: str) -> CliResult:
    """``flora-batch run`` against the emulator, fast."""
    return run_cli("run", str(manifest_path), *FAST, *flags,
                   env=env(manifest_path.parent, server, **extra))


def counts(server: Any) -> dict[str, int]:
    """Requests the emulator saw, by route."""
    return dict(server.emulator.request_counts)


def asset_creates(server: Any) -> int:
    """``POST /api/v1/assets`` requests seen."""
    return counts(server).get("POST /api/v1/assets", 0)


def run_creates(server: Any) -> int:
    """Technique-run creates seen."""
    return sum(v for k, v in counts(server).items() if k.startswith("POST") and "/runs" in k)


def paid_requests(server: Any) -> int:
    """Every request that is not a free technique read."""
    return sum(v for k, v in counts(server).items() if not k.startswith("GET /api/v1/techniques"))

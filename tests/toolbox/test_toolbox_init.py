"""`flora-batch init`: a manifest and CSV template that `plan` accepts once rows are filled in."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest
from toolbox_helpers import creates, env

from flora_batch.cli.scaffold import columns, csv_header, manifest_text
from flora_batch.emulator.catalog import load_catalog
from flora_batch.manifest import build_jobs, load_manifest
from flora_batch.manifest.rows import load_rows
from flora_batch.remote.client import FloraClient
from flora_batch.types import Technique


def _header(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return next(csv.reader(fh))


def test_init_then_fill_then_plan_passes(emulator, run_cli, tmp_path: Path):
    """init writes a manifest + CSV for the technique's inputs; filled in, `plan` exits 0."""
    server = emulator()
    res = run_cli("init", "studio-shot", "--dir", str(tmp_path / "b"), env=env(tmp_path, server))
    assert res.code == 0, res.text
    manifest, rows = tmp_path / "b" / "studio-shot.yaml", tmp_path / "b" / "studio-shot.csv"
    assert _header(rows) == ["product", "backdrop"]
    text = manifest.read_text()
    assert "product: imageUrl, required" in text and "backdrop: text, optional" in text
    assert "media.flora.ai" in text and "storage.googleapis.com" in text
    with rows.open("a", newline="") as fh:
        csv.writer(fh).writerows(
            [["https://media.flora.ai/a.jpg", "peach paper"], ["https://media.flora.ai/b.jpg", ""]]
        )
    planned = run_cli("plan", str(manifest), env=env(tmp_path, server))
    assert planned.code == 0, planned.text
    assert "2 jobs — 2 new" in planned.out and "$0.12" in planned.out
    assert creates(server) == 0


def test_init_refuses_to_overwrite(run_cli, tmp_path: Path):
    """An existing manifest or CSV makes init exit 2 and write nothing."""
    (tmp_path / "studio-shot.csv").write_text("mine\n")
    res = run_cli("init", "studio-shot", "--demo", "--dir", str(tmp_path), env=env(tmp_path))
    assert res.code == 2
    assert "refusing to overwrite" in res.err and "studio-shot.csv" in res.err
    assert (tmp_path / "studio-shot.csv").read_text() == "mine\n"
    assert not (tmp_path / "studio-shot.yaml").exists()


def test_init_rows_option_names_the_template(run_cli, tmp_path: Path):
    """`--rows` names the CSV template and the manifest points at it."""
    res = run_cli("init", "quick-reframe", "--demo", "--rows", "layouts.csv", "--dir",
                  str(tmp_path), env=env(tmp_path))
    assert res.code == 0, res.text
    assert _header(tmp_path / "layouts.csv") == ["layout", "aspect_ratio"]
    assert load_manifest(tmp_path / "quick-reframe.yaml").rows.path == tmp_path / "layouts.csv"


def test_init_unknown_technique_writes_nothing(run_cli, tmp_path: Path):
    """An unknown slug exits 2 and leaves the folder empty."""
    res = run_cli("init", "no-such-thing", "--demo", "--dir", str(tmp_path / "x"),
                  env=env(tmp_path))
    assert res.code == 2
    assert not (tmp_path / "x").exists()


def _schemas(server) -> list[Technique]:
    async def fetch() -> list[Technique]:
        async with FloraClient(server.base_url, server.api_key) as client:
            slugs = [t.slug for t in load_catalog().techniques]
            return [await client.get_technique(s) for s in slugs]

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def every_schema() -> list[Technique]:
    """The live schema of every catalog technique, read once from an emulator."""
    from flora_batch.emulator import EmulatorConfig
    from flora_batch.emulator.serve import start_server

    with start_server(EmulatorConfig(), host="127.0.0.1", port=0) as server:
        return _schemas(server)


def test_every_technique_scaffolds_a_valid_manifest(every_schema, tmp_path: Path):
    """For every technique the scaffold loads, and one filled row builds one job."""
    for technique in every_schema:
        folder = tmp_path / technique.slug
        folder.mkdir()
        (folder / "rows.csv").write_text(csv_header(technique) + _sample_row(technique))
        (folder / "m.yaml").write_text(manifest_text(technique, "rows.csv"))
        m = load_manifest(folder / "m.yaml")
        cols, rows = load_rows(m.rows, m.path)
        assert cols == columns(technique)
        specs, problems = build_jobs(m, cols, rows, {technique.slug: technique})
        assert problems == [] and len(specs) == 1, (technique.slug, problems)


def _sample_row(technique: Technique) -> str:
    values = []
    for slot in technique.inputs:
        if slot.type == "text":
            values.append("16:9" if "aspect" in slot.id else "a sample")
        else:
            values.append("https://media.flora.ai/sample.jpg")
    return ",".join(values) + "\n"

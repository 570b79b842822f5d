"""Rows edited between runs (issue #16): identical rows, inserted rows, and names on disk.

Each test edits the rows file between two in-process runs of the real ``run_batch``
against the emulator, and judges money from the emulator's own books: every row ends
with its own file, and no key is charged twice or for nothing.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
from fault_helpers import FAST, creates, ledger_path, read_jobs, run_cli
from inproc import CrashingTransport, fast_settings, run_once

from flora_batch.client import FloraClient
from flora_batch.emulator import Emulator, EmulatorConfig
from flora_batch.errors import ManifestProblems
from flora_batch.jobs import build_keyed_jobs
from flora_batch.keys import job_key
from flora_batch.ledger import Ledger
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import fetch_techniques, plan_batch
from flora_batch.rows import load_rows
from flora_batch.types import JobKey, JobSpec, JobState, RunInput

pytestmark = pytest.mark.usefixtures("retry_fast")

FIELDS = ["sku", "title", "image_url", "label"]
MUG = {"title": "Mug", "image_url": "https://media.flora.ai/demo/mug.jpg", "label": "mugs"}


def emulator() -> Emulator:
    """An in-process emulator, fast."""
    return Emulator(EmulatorConfig(speed=1000.0))


def write_rows(folder: Path, products: list[dict[str, str]]) -> None:
    """(Re)write the batch's products.csv."""
    with open(folder / "products.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(products)


def write_batch(folder: Path, products: list[dict[str, str]], *, name: str = "{sku}") -> Path:
    """A studio-shot manifest with an id column over ``products``; files named by ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_rows(folder, products)
    manifest = folder / "mugs.yaml"
    manifest.write_text(
        "name: mugs\ntechnique: studio-shot\nrows: products.csv\nid: sku\n"
        'inputs:\n  product: "{image_url}"\n  backdrop: "seamless paper behind {title}"\n'
        f'output:\n  dir: results\n  name: "{name}/{{technique}}-{{output_id}}{{ext}}"\n'
    )
    return manifest


def mugs(*skus: str) -> list[dict[str, str]]:
    """Identical rows (the same inputs) that differ only by their id."""
    return [{"sku": sku, **MUG} for sku in skus]


def files(manifest: Path) -> list[str]:
    """The results folder's files, relative, sorted."""
    root = manifest.parent / "results"
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and ".flora-tmp" not in p.parts
    )


def old_keys(skus: list[str]) -> dict[str, JobKey]:
    """The keys flora-batch gave identical rows before #16: occurrence 0, 1, 2... in row order."""
    inputs = (
        RunInput("product", "imageUrl", MUG["image_url"]),
        RunInput("backdrop", "text", f"seamless paper behind {MUG['title']}"),
    )
    return {
        sku: job_key(JobSpec("mugs", "studio-shot", inputs, row_index=n, occurrence=n))
        for n, sku in enumerate(skus)
    }


async def test_an_inserted_identical_row_gets_its_own_file_and_is_bought_once(tmp_path: Path):
    """A1 A2 A3 identical and done; A9 inserted after A1: only A9 is bought, all have files."""
    emu = emulator()
    transport = CrashingTransport(emu)
    manifest = write_batch(tmp_path / "b", mugs("A1", "A2", "A3"))
    await run_once(manifest, fast_settings(emu), transport)
    assert len(emu.charges_by_key()) == 3
    write_rows(manifest.parent, mugs("A1", "A9", "A2", "A3"))
    result = await run_once(manifest, fast_settings(emu), transport)
    assert result.outcome.stuck == []
    assert sorted(emu.charges_by_key().values()) == [1] * 4
    assert creates(emu) == 4
    assert files(manifest) == [f"{s}/studio-shot-output_1.png" for s in ("A1", "A2", "A3", "A9")]
    jobs = {j.row_id: j for j in read_jobs(manifest)}
    assert all(j.state is JobState.DONE for j in jobs.values())
    saved = manifest.parent / "results/A9/studio-shot-output_1.png"
    assert jobs["A9"].outputs[0].path == str(saved)


async def test_a_ledger_keyed_by_row_order_keeps_its_keys_and_buys_only_the_new_row(
    tmp_path: Path,
):
    """Jobs recorded under the old numbering (occurrence n) keep their keys: nothing re-bought."""
    emu = emulator()
    transport = CrashingTransport(emu)
    manifest = write_batch(tmp_path / "b", mugs("A1", "A2", "A3"))
    old = old_keys(["A1", "A2", "A3"])
    # The ledger an older flora-batch wrote: the same jobs, under occurrence 0, 1, 2.
    specs = await _specs(manifest, emu)
    legacy = [(old[s.row_id or ""], replace(s, occurrence=n)) for n, s in enumerate(specs)]
    assert [job_key(spec) for _, spec in legacy] == list(old.values())
    with Ledger.open(ledger_path(manifest)) as ledger:
        ledger.record_planned(legacy, quoted_cost={"studio-shot": 0.04}, now=0.0)
    await run_once(manifest, fast_settings(emu), transport)
    assert set(emu.charges_by_key()) == set(old.values())
    assert {j.key for j in read_jobs(manifest)} == set(old.values())
    write_rows(manifest.parent, mugs("A1", "A9", "A2", "A3"))
    await run_once(manifest, fast_settings(emu), transport)
    charged = emu.charges_by_key()
    assert sorted(charged.values()) == [1] * 4
    assert set(charged) - set(old.values()) == {j.key for j in read_jobs(manifest)} - set(
        old.values()
    )
    jobs = {j.row_id: j for j in read_jobs(manifest)}
    assert {sku: jobs[sku].key for sku in old} == old
    assert files(manifest) == [f"{s}/studio-shot-output_1.png" for s in ("A1", "A2", "A3", "A9")]
    await run_once(manifest, fast_settings(emu), transport)
    assert creates(emu) == 4


async def _specs(manifest: Path, emu: Emulator) -> list[JobSpec]:
    """The manifest's jobs as ``build_keyed_jobs`` makes them (the live schema, rows read)."""
    m = load_manifest(manifest)
    settings = fast_settings(emu)
    transport = CrashingTransport(emu)
    async with FloraClient(settings.base_url, settings.api_key, transport=transport) as client:
        techniques = await fetch_techniques(client, m)
    columns, rows = load_rows(m.rows, m.path)
    return [spec for _, spec in build_keyed_jobs(m, columns, rows, techniques)[0]]


async def test_a_new_row_named_like_a_saved_file_is_refused_at_plan_time(tmp_path: Path):
    """A new job whose file name a done job's file already has: a located error, nothing bought."""
    emu = emulator()
    transport = CrashingTransport(emu)
    first = {"sku": "A1", **MUG, "label": "red"}
    manifest = write_batch(tmp_path / "b", [first], name="{label}")
    await run_once(manifest, fast_settings(emu), transport)
    assert files(manifest) == ["red/studio-shot-output_1.png"]
    # A1's label changes (no input uses it: the same job, its file stays red/...), and a
    # new row takes the label red: its file would be A1's.
    lamp = {"sku": "B2", "title": "Lamp", "image_url": "https://media.flora.ai/demo/lamp.jpg"}
    write_rows(manifest.parent, [{**first, "label": "blue"}, {**lamp, "label": "red"}])
    before = creates(emu)
    with pytest.raises(ManifestProblems) as planned:
        await plan_batch(load_manifest(manifest), fast_settings(emu), transport=transport)
    [problem] = planned.value.problems
    assert str(problem).startswith(f"{manifest.parent / 'products.csv'}:3: an output file ")
    assert "'red/studio-shot-output_1.png', saved before for A1 (studio-shot, done)" in str(
        problem
    )
    with pytest.raises(ManifestProblems):
        await run_once(manifest, fast_settings(emu), transport)
    assert creates(emu) == before
    assert len(emu.charges_by_key()) == 1
    skipped = await run_once(manifest, fast_settings(emu, skip_invalid=True), transport)
    assert [str(p) for p in skipped.prepared.skipped] == [str(problem)]
    assert creates(emu) == before


def test_plan_and_run_exit_2_before_buying_a_file_name_a_saved_file_has(serve, tmp_path: Path):
    """The CLI: `plan` and `run` exit 2 naming the row, and FLORA sees no create."""
    server = serve(speed=1000.0)
    first = {"sku": "A1", **MUG, "label": "red"}
    manifest = write_batch(tmp_path / "b", [first], name="{label}")
    assert run_cli(server, ["run", str(manifest), *FAST], tmp_path / "1.log").code == 0
    lamp = {"sku": "B2", "title": "Lamp", "image_url": "https://media.flora.ai/demo/lamp.jpg"}
    write_rows(manifest.parent, [{**first, "label": "blue"}, {**lamp, "label": "red"}])
    for n, args in enumerate([["plan", str(manifest)], ["run", str(manifest), *FAST]]):
        ended = run_cli(server, args, tmp_path / f"{n + 2}.log")
        assert ended.code == 2, ended.out
        assert "products.csv:3: an output file of" in ended.out
        assert "1 problem(s); nothing was submitted." in ended.out
    assert creates(server.emulator) == 1

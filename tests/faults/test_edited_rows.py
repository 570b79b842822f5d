"""Rows edited between runs (issue #16): identical rows, inserted rows, and names on disk.

Each test edits the rows file between two in-process runs of the real ``run_batch``
against the emulator, and judges money from the emulator's own books: every row ends
with its own file, and no key is charged twice or for nothing.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
from fault_helpers import (
    FAST,
    check_promise,
    creates,
    kill_when,
    ledger_path,
    read_jobs,
    run_cli,
    sha256_of,
    tree,
)
from inproc import CrashingTransport, fast_settings, run_crashing, run_once

from flora_batch.emulator import Emulator, EmulatorConfig
from flora_batch.errors import ManifestProblems
from flora_batch.keys import job_key
from flora_batch.ledger import Ledger
from flora_batch.manifest import load_manifest
from flora_batch.manifest.jobs import build_keyed_jobs
from flora_batch.manifest.rows import load_rows
from flora_batch.pipeline import fetch_techniques, plan_batch
from flora_batch.remote.client import FloraClient
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


# -- hole 6: a row edited (or deleted) while its paid run is in flight ----------------------

LAMP = {"sku": "B2", "title": "Lamp", "image_url": "https://media.flora.ai/demo/lamp.jpg"}
CUP = "https://media.flora.ai/demo/cup.jpg"


@pytest.mark.parametrize(
    ("mode", "crash", "edit"),
    [
        ("replay", ("create", 1, "after"), "edit"),  # left submitting: resent with its key
        ("conflict", ("create", 1, "after"), "edit"),  # submitting -> 409 -> reconciled
        ("replay", ("media", 1, "before"), "edit"),  # left running: its run completed
        ("replay", ("media", 1, "before"), "delete"),
    ],
)
async def test_a_run_in_flight_for_an_edited_row_is_finished_and_saved_apart(
    tmp_path: Path, mode: str, crash: tuple[str, int, str], edit: str
):
    """Killed with A1's paid run in flight, A1 edited (or deleted): the old run is polled
    and downloaded under _superseded/, never bought again, and its quote is settled."""
    emu = Emulator(EmulatorConfig(speed=1000.0, idempotency=mode))  # type: ignore[arg-type]
    transport = CrashingTransport(emu)
    manifest = write_batch(tmp_path / "b", [{"sku": "A1", **MUG}, {**LAMP, "label": "x"}])
    config = fast_settings(emu, concurrency=1)
    assert await run_crashing(manifest, config, transport, crash) is None
    [old] = [j for j in read_jobs(manifest) if j.row_id == "A1"]
    assert old.state in (JobState.SUBMITTING, JobState.RUNNING)
    edited = [{"sku": "A1", **MUG, "image_url": CUP}] if edit == "edit" else []
    write_rows(manifest.parent, [*edited, {**LAMP, "label": "x"}])
    result = await run_once(manifest, fast_settings(emu), transport)
    jobs = {j.key: j for j in read_jobs(manifest)}
    assert jobs[old.key].state is JobState.DONE
    assert [r.key for r in result.superseded] == [old.key]
    assert result.outcome.counts[JobState.DONE] == 1 + len(edited)
    assert sorted(emu.charges_by_key().values()) == [1] * (2 + len(edited))
    assert emu.charges_by_key()[old.key] == 1
    spent, reserved = Ledger.open(ledger_path(manifest)).money()
    assert reserved == 0 and abs(spent - emu.total_charged()) < 1e-9
    saved = manifest.parent / "results/_superseded/A1/studio-shot-output_1.png"
    assert jobs[old.key].outputs[0].path == str(saved)
    assert sha256_of(saved) == emu.served_media[(jobs[old.key].run_id or "", "output_1")]
    mine = ["A1/studio-shot-output_1.png"] if edited else []
    assert files(manifest) == sorted(
        [*mine, "B2/studio-shot-output_1.png", "_superseded/A1/studio-shot-output_1.png"]
    )
    creates_after = creates(emu)
    again = await run_once(manifest, fast_settings(emu), transport)
    assert creates(emu) == creates_after and again.superseded == []


async def test_a_planned_job_of_an_edited_row_is_never_bought(tmp_path: Path):
    """A job never sent (budget stop) whose row is then edited is left unbought."""
    emu = emulator()
    transport = CrashingTransport(emu)
    manifest = write_batch(tmp_path / "b", [{"sku": "A1", **MUG}, {**LAMP, "label": "x"}])
    capped = await run_once(manifest, fast_settings(emu, max_cost=0.07, concurrency=1), transport)
    assert capped.outcome.stopped == "budget"
    [waiting] = [j for j in read_jobs(manifest) if j.state is JobState.PLANNED]
    write_rows(manifest.parent, [{"sku": "A1", **MUG}, {**LAMP, "label": "x", "title": "Desk"}])
    result = await run_once(manifest, fast_settings(emu), transport)
    assert waiting.key not in emu.charges_by_key()
    assert [j.state for j in read_jobs(manifest) if j.key == waiting.key] == [JobState.PLANNED]
    assert result.superseded == [] and result.outcome.counts[JobState.DONE] == 2


async def test_plan_names_the_runs_in_flight_of_edited_rows(tmp_path: Path):
    """`plan` (in-process) lists the superseded jobs with a run in flight, before any run."""
    emu = emulator()
    transport = CrashingTransport(emu)
    manifest = write_batch(tmp_path / "b", [{"sku": "A1", **MUG}, {**LAMP, "label": "x"}])
    config = fast_settings(emu, concurrency=1)
    await run_crashing(manifest, config, transport, ("media", 1, "before"))
    [old] = [j for j in read_jobs(manifest) if j.row_id == "A1"]
    write_rows(manifest.parent, [{"sku": "A1", **MUG, "image_url": CUP}, {**LAMP, "label": "x"}])
    prepared, _ = await plan_batch(load_manifest(manifest), config, transport=transport)
    assert prepared.plan.superseded == (old.key,)
    assert prepared.plan.changed == ((old.key, prepared.plan.new[0]),)


def test_a_killed_run_then_an_edit_the_cli_says_so_finishes_and_counts_apart(
    serve, tmp_path: Path
):
    """kill -9 with runs in flight, a row edited: `plan` says its run will be finished under
    _superseded/, `run` does it (exit 0) and counts it apart, `status` and `report` too."""
    server = serve(speed=20.0)  # studio-shot takes ~1.5 s: both runs are in flight at the kill
    emu = server.emulator
    manifest = write_batch(tmp_path / "b", [{"sku": "A1", **MUG}, {**LAMP, "label": "x"}])
    before = tree(manifest.parent)
    args = ["run", str(manifest), "--min-poll", "0.1", "--rate", "0", "--timeout", "2"]
    killed = kill_when(server, args, tmp_path / "1.log", lambda: creates(emu) >= 2)
    assert killed.killed
    [old] = [j for j in read_jobs(manifest) if j.row_id == "A1"]
    assert old.state in (JobState.SUBMITTING, JobState.RUNNING)
    write_rows(manifest.parent, [{"sku": "A1", **MUG, "image_url": CUP}, {**LAMP, "label": "x"}])
    planned = run_cli(server, ["plan", str(manifest)], tmp_path / "2.log")
    assert planned.code == 0, planned.out
    results = manifest.parent / "results"
    assert (
        f"1 job(s) of edited or removed rows have runs in flight: they will be finished and "
        f"saved under {results}/_superseded/" in planned.out
    )
    done = run_cli(server, args, tmp_path / "4.log")
    assert done.code == 0, done.out
    assert "mugs: 2 of 2 jobs done" in done.out
    assert "superseded 1 job(s) of edited or removed rows: their paid runs finished (1 done)" in (
        done.out
    )
    jobs = check_promise(server, manifest, before)
    assert {j.key: j.state for j in jobs}[old.key] is JobState.DONE
    assert len(emu.charges_by_key()) == 3
    looked = run_cli(server, ["status", str(manifest), "--json"], tmp_path / "5.log")
    status = json.loads(looked.out)
    assert (status["states"]["done"], status["superseded"], status["finished"]) == (
        2,
        {"done": 1},
        True,
    )
    assert run_cli(server, ["report", str(manifest)], tmp_path / "6.log").code == 0
    with open(results / "_report" / "results.csv", encoding="utf-8-sig") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["sku"], r["status"]) for r in table] == [
        ("A1", "done"),
        ("B2", "done"),
        ("A1", "done (superseded)"),
    ]
    assert table[2]["output:output_1"] == "_superseded/A1/studio-shot-output_1.png"

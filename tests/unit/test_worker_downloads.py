"""How a completed run's outputs reach the ledger, with the real emulator in-process.

A run with one output (the usual case) is recorded ``running -> done`` together with its
file, in one commit (``Ledger.finish_run``).  When that first fetch fails, or its URL has
expired, the outputs are recorded first (``downloading``) and the usual rounds go on.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
from worker_support import BreakMedia, SlowPolls, batch, settings, states

from flora_batch import retrying
from flora_batch.emulator import Emulator, EmulatorConfig
from flora_batch.errors import ManifestProblems
from flora_batch.ledger import Ledger
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import run_batch
from flora_batch.types import JobState
from flora_batch.worker import loop as worker


def moves(manifest: Path) -> list[list[tuple[str, str]]]:
    """Each job's state changes after planning (``from -> to``, action), oldest first."""
    with Ledger.open(str(manifest.parent / "sched.ledger.db")) as ledger:
        log: list[dict[str, Any]] = ledger.events()
        keys = [j.key for j in ledger.jobs()]
        done = [j for j in ledger.jobs() if j.state is JobState.DONE]
        assert all(o.sha256 and o.path for j in done for o in j.outputs)
    return [
        [
            (f"{e['from_state']}->{e['to_state']}", e["detail"]["action"])
            for e in log
            if e["job_key"] == k and e["from_state"]
        ]
        for k in keys
    ]


FIRST_FETCH = [("planned->submitting", "mark_submitting"), ("submitting->running", "mark_running")]
ONE_STEP = [*FIRST_FETCH, ("running->done", "finish_run")]
TWO_STEPS = [
    *FIRST_FETCH,
    ("running->downloading", "mark_downloading"),
    ("downloading->done", "mark_done"),
]


async def test_a_run_with_one_output_is_done_with_its_file_in_one_commit(tmp_path: Path) -> None:
    """One output: ``running -> done`` at once (``finish_run``); several: ``downloading``
    first, each file saved as it lands."""
    emu = Emulator(EmulatorConfig(speed=1000.0))
    one = batch(tmp_path / "one", 3)
    four = batch(tmp_path / "four", 1, technique="turn-any-product-into-4-ad-visuals")
    with retrying.set_testing():
        for manifest, n in ((one, 3), (four, 1)):
            result = await run_batch(
                load_manifest(manifest), settings(emu, n, min_poll=0.01), transport=SlowPolls(emu)
            )
            assert result.outcome.counts[JobState.DONE] == n
    assert moves(one) == [ONE_STEP] * 3
    [four_moves] = moves(four)
    assert four_moves[:3] == TWO_STEPS[:3]
    assert four_moves[-1] == ("downloading->done", "mark_done")
    assert sorted(emu.charges_by_key().values()) == [1] * 4


async def test_an_expired_url_at_the_first_fetch_is_refreshed_then_recorded(
    tmp_path: Path,
) -> None:
    """The run's one URL answers 410: the run is polled again for a fresh one, and the
    outputs are recorded with it before the file (no new run)."""
    emu = Emulator(EmulatorConfig(speed=1000.0))
    manifest = batch(tmp_path, 1)
    transport = BreakMedia(emu, broken="/_media/", times=1, status=410)
    with retrying.set_testing():
        result = await run_batch(
            load_manifest(manifest), settings(emu, 1, min_poll=0.01), transport=transport
        )
    assert result.outcome.counts[JobState.DONE] == 1
    assert len(transport.media) == 2  # the expired URL, then the fresh one
    [job_moves] = moves(manifest)
    assert job_moves[:3] == TWO_STEPS[:3]
    assert job_moves[-1] == ("downloading->done", "mark_done")
    assert emu.charges_by_key() and set(emu.charges_by_key().values()) == {1}


async def test_a_first_fetch_that_fails_records_the_outputs_for_the_next_round(
    tmp_path: Path,
) -> None:
    """The one output fails a whole round (every retry): the job is ``downloading`` with
    its outputs, and the next round fetches and saves the file."""
    emu = Emulator(EmulatorConfig(speed=1000.0))
    manifest = batch(tmp_path, 1)
    tries = retrying.DEFAULT_POLICY.attempts
    transport = BreakMedia(emu, broken="/_media/", times=tries)
    with retrying.set_testing():
        result = await run_batch(
            load_manifest(manifest), settings(emu, 1, min_poll=0.01), transport=transport
        )
    assert result.outcome.counts[JobState.DONE] == 1
    assert len(transport.media) == tries + 1
    [job_moves] = moves(manifest)
    assert job_moves == TWO_STEPS
    assert list(emu.charges_by_key().values()) == [1]


async def test_an_expired_url_of_a_recorded_output_is_refreshed_in_the_ledger(
    tmp_path: Path,
) -> None:
    """Four outputs (recorded before their files): the third's URL answers 410 once; the
    run is polled again and the fresh URLs replace the old ones, saved files kept."""
    emu = Emulator(EmulatorConfig(speed=1000.0))
    manifest = batch(tmp_path, 1, technique="turn-any-product-into-4-ad-visuals")
    transport = BreakMedia(emu, broken="/output_3", times=1, status=410)
    with retrying.set_testing():
        result = await run_batch(
            load_manifest(manifest), settings(emu, 1, min_poll=0.01), transport=transport
        )
    assert result.outcome.counts[JobState.DONE] == 1
    fetched = [p.rsplit("/", 1)[-1].split(".")[0] for p in transport.media]
    assert fetched == ["output_1", "output_2", "output_3", "output_3", "output_4"]
    with Ledger.open(str(manifest.parent / "sched.ledger.db")) as ledger:
        [job] = ledger.jobs()
    assert [o.sha256 is not None for o in job.outputs] == [True] * 4
    assert list(emu.charges_by_key().values()) == [1]


async def test_a_file_whose_commit_was_lost_is_fetched_again_under_its_name(
    tmp_path: Path,
) -> None:
    """Stopped between a file's rename and the commit that records it: the job is still
    ``running`` with its run, so the next run polls that run and fetches the file again
    under the same name (replacing it): one charge, nothing else in the results folder."""
    emu = Emulator(EmulatorConfig(speed=1000.0))
    manifest = batch(tmp_path, 1)
    landed: list[Path] = []

    def stop_after_rename(w: worker.Worker) -> None:
        commit = w.results.commit

        def renamed_then_gone(tmp: Path, relative: str, *, synced: bool = False) -> Path | str:
            landed.append(Path(commit(tmp, relative, synced=synced)))
            raise asyncio.CancelledError  # as if killed before ``finish_run``'s commit

        w.results.commit = renamed_then_gone  # type: ignore[method-assign]

    quick = settings(emu, 1, min_poll=0.01)
    with retrying.set_testing():
        await run_batch(
            load_manifest(manifest), quick, transport=SlowPolls(emu), on_worker=stop_after_rename
        )
        assert states(manifest) == [JobState.RUNNING]
        assert [p.is_file() for p in landed] == [True]
        result = await run_batch(load_manifest(manifest), quick, transport=SlowPolls(emu))
    assert result.outcome.counts[JobState.DONE] == 1
    with Ledger.open(str(manifest.parent / "sched.ledger.db")) as ledger:
        [job] = ledger.jobs()
    [out] = job.outputs
    assert Path(out.path or "") == landed[0]
    assert hashlib.sha256(landed[0].read_bytes()).hexdigest() == out.sha256
    files = [p for p in (manifest.parent / "results").rglob("*") if p.is_file()]
    assert files == [landed[0]]
    assert list(emu.charges_by_key().values()) == [1]


async def test_a_saved_file_is_never_overwritten_after_output_name_changes(tmp_path: Path) -> None:
    """Done jobs keep the names their files were saved under, whatever ``output.name``
    says now: a new row whose new name is an old job's file is refused before it is
    bought (a located row problem; ``--skip-invalid`` runs the rest), the file kept."""
    emu = Emulator(EmulatorConfig(speed=200.0))
    manifest = batch(tmp_path, 2)
    with retrying.set_testing():
        await run_batch(load_manifest(manifest), settings(emu, 2), transport=SlowPolls(emu))
        first = tmp_path / "results" / "S000-output_1.png"
        kept = first.read_bytes()
        rows = tmp_path / "rows.csv"
        lines = rows.read_text().splitlines()
        rows.write_text(
            "sku,image_url,label\n"
            f"{lines[1]},first\n{lines[2]},second\n"
            "S002,https://media.flora.ai/demo/cup-9.jpg,S000\n"
        )
        manifest.write_text(manifest.read_text().replace("{sku}-", "{label}-"))
        with pytest.raises(ManifestProblems) as refused:
            await run_batch(load_manifest(manifest), settings(emu, 3), transport=SlowPolls(emu))
        skipping = settings(emu, 3, skip_invalid=True)
        again = await run_batch(load_manifest(manifest), skipping, transport=SlowPolls(emu))
    assert first.read_bytes() == kept
    [reason] = refused.value.problems
    assert reason.line == 4 and "'S000-output_1.png', saved before for S000" in str(reason)
    assert [str(p) for p in again.prepared.skipped] == [str(reason)]
    assert states(manifest) == [JobState.DONE, JobState.DONE]
    assert sorted(emu.charges_by_key().values()) == [1, 1]

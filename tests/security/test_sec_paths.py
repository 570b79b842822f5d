"""Paths: output names built from hostile cells, and links planted in the results folder,
can never write outside the results folder or over another job's file.

``naming.render_output_name`` sanitises every name (its docstring lists the rules) and
``results.Results.target`` refuses names that climb out, point into ``.flora-tmp``, or
pass through a symlink; clashes (names equal ignoring case) are reported at plan time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_helpers import (
    FAST,
    PNG,
    assert_no_traceback,
    cli_env,
    creates,
    run_cli,
    write_batch,
)

from flora_batch.errors import EXIT_LOCAL, ResultsError
from flora_batch.manifest.naming import render_output_name
from flora_batch.results.local import TMP_DIR, Results

HOSTILE = [
    "SKU-1",
    "SKU-2",
    "SKU-3",
    "../../etc/passwd",
    "/etc/hostname",
    "..",
    "NUL",
    "con.txt",
    "x" * 400,
    "a\\..\\..\\b",
    "C:\\Windows\\System32",
    "\u202eevil.exe",
    "line\nbreak",
    ".flora-tmp",
    "_Superseded",  # where superseded jobs' files go: no row may name into it
    "~root",
    "Case",
    "CASE",  # differs from "Case" only in case: a clash
]
TEMPLATES = [
    "{sku}/{output_id}{ext}",
    "{sku}{ext}",
    "{technique}/{sku}-{title}{ext}",
    "{title}/{sku}/{output_id}{ext}",
    "/{sku}/../{title}{ext}",
    "{sku}",
]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    template=st.sampled_from(TEMPLATES),
    sku=st.sampled_from(HOSTILE) | st.text(max_size=300),
    title=st.text(max_size=40),
    ext=st.sampled_from([".png", "", "/../..", ".\x00"]),
)
def test_no_name_leaves_the_results_folder(
    tmp_path: Path, template: str, sku: str, title: str, ext: str
) -> None:
    """Any cells and template: the target is strictly inside the root, never in .flora-tmp
    nor in _superseded (the superseded jobs' folder)."""
    name = render_output_name(
        template,
        {"sku": sku, "title": title},
        technique="studio-shot",
        output_id="output_1",
        ext=ext,
        index=0,
        row_number=1,
        key="fk1:0123456789abcdef",
    )
    root = tmp_path / "results"
    target = Results(root).target(name)
    assert root.resolve() in target.parents
    assert target.relative_to(root.resolve()).parts[0].casefold() not in (TMP_DIR, "_superseded")
    assert all(len(part.encode()) <= 255 for part in target.parts)


def test_planted_links_are_never_written_through(tmp_path: Path) -> None:
    """Links to outside, and to another job's folder, are refused; nothing outside changes."""
    root, outside = tmp_path / "results", tmp_path / "elsewhere"
    (root / "SKU-2").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, root / "SKU-1")
    os.symlink(root / "SKU-2", root / "SKU-3")
    results = Results(root)
    results.prepare()
    for name in ("SKU-1/output_1.png", "SKU-3/output_1.png"):
        tmp = results.temp_path()
        tmp.write_bytes(PNG)
        with pytest.raises(ResultsError, match="symlink"):
            results.commit(tmp, name)
        assert not tmp.exists()
    assert list(outside.iterdir()) == [] and list((root / "SKU-2").iterdir()) == []


def test_a_link_at_the_final_name_is_replaced_not_followed(tmp_path: Path) -> None:
    """A symlink planted where an output goes is replaced by the file; its target is untouched."""
    root, victim = tmp_path / "results", tmp_path / "victim.txt"
    victim.write_text("precious")
    (root / "SKU-1").mkdir(parents=True)
    os.symlink(victim, root / "SKU-1" / "output_1.png")
    results = Results(root)
    results.prepare()
    tmp = results.temp_path()
    tmp.write_bytes(PNG)
    final = results.commit(tmp, "SKU-1/output_1.png")
    assert not final.is_symlink() and final.read_bytes() == PNG
    assert victim.read_text() == "precious"


def test_a_linked_temporary_folder_is_refused_and_never_swept(tmp_path: Path) -> None:
    """`.flora-tmp` linked to another folder: prepare refuses it and deletes nothing there."""
    root, outside = tmp_path / "results", tmp_path / "documents"
    root.mkdir()
    outside.mkdir()
    (outside / "thesis.part").write_text("years of work")
    os.symlink(outside, root / TMP_DIR)
    with pytest.raises(ResultsError, match="symlink"):
        Results(root).prepare()
    assert (outside / "thesis.part").read_text() == "years of work"


def test_sweep_removes_only_partial_downloads(tmp_path: Path) -> None:
    """The crash sweep deletes ``*.part`` leftovers only, never other files or links' targets."""
    root = tmp_path / "results"
    results = Results(root)
    results.prepare()
    (root / TMP_DIR / "abc.part").write_bytes(b"partial")
    (root / TMP_DIR / "notes.txt").write_text("keep")
    assert results.sweep_temporary() == 1
    assert sorted(p.name for p in (root / TMP_DIR).iterdir()) == ["notes.txt"]


def files_under(folder: Path) -> set[Path]:
    """Every file and link below ``folder``."""
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def test_hostile_cells_and_planted_links_end_to_end(emulator: Any, tmp_path: Path) -> None:
    """Hostile cells and planted links: writes stay inside, clashes found at plan time."""
    server = emulator()
    rows = [
        {"sku": sku, "title": f"t{i}", "image_url": f"https://media.flora.ai/{i}.jpg"}
        for i, sku in enumerate(HOSTILE)
    ]
    manifest = write_batch(tmp_path / "b", rows)
    results, outside = tmp_path / "b" / "results", tmp_path / "elsewhere"
    outside.mkdir()
    (results / "old").mkdir(parents=True)  # another job's earlier output
    (results / "old" / "output_1.png").write_bytes(b"precious")
    os.symlink(outside, results / "SKU-1")
    os.symlink(results / "old", results / "SKU-3")
    env = cli_env(server, home=tmp_path)
    before = files_under(tmp_path)

    plan = run_cli("plan", str(manifest), env=env)
    assert plan.code == 2 and creates(server) == 0, plan.text
    assert "output file 'CASE/" in plan.err and "clashes with" in plan.err, plan.err

    first = run_cli("run", str(manifest), *FAST, "--skip-invalid", env=env)
    assert first.code == EXIT_LOCAL, first.text  # the planted link is in the way
    assert_no_traceback(first)
    assert "never writes through links in the results folder" in first.err, first.text
    assert list(outside.iterdir()) == [] and list((results / "old").iterdir()) == [
        results / "old" / "output_1.png"
    ]
    new = files_under(tmp_path) - before
    assert all(results in p.parents or p.name.startswith("b.ledger.db") for p in new), new

    os.unlink(results / "SKU-1")
    os.unlink(results / "SKU-3")
    second = run_cli("run", str(manifest), *FAST, "--skip-invalid", env=env)
    assert second.code == 0, second.text
    charges = server.emulator.charges_by_key()  # the clashing row never ran; no job twice
    assert len(charges) == len(HOSTILE) - 1 and set(charges.values()) == {1}
    names = {str(p.relative_to(results)) for p in results.rglob("*.png")}
    assert {
        "SKU-1/output_1.png",
        ".._.._etc_passwd/output_1.png",
        "_etc_hostname/output_1.png",
        "output_1.png",
        "_NUL/output_1.png",
        "_con.txt/output_1.png",
        "_.flora-tmp/output_1.png",
        "__Superseded/output_1.png",
        "line_break/output_1.png",
        "Case/output_1.png",
    } <= names
    assert len(names - {"old/output_1.png"}) == len(HOSTILE) - 1
    assert list(outside.iterdir()) == []
    assert (results / "old" / "output_1.png").read_bytes() == b"precious"

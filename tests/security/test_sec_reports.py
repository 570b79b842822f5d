"""Reports: hostile cells and a hostile server's error text cannot run as spreadsheet
formulas, cannot inject HTML into the contact sheet, and a symlink planted in the report
folder is never written through (``report._atomic``).

The batch runs in-process against ``HostileFlora``; ``flora-batch report`` runs as the
real CLI over its ledger.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from openpyxl import load_workbook
from security_helpers import (
    PNG,
    HostileFlora,
    body,
    cli_env,
    completed,
    run_cli,
    write_batch,
)

from flora_batch.config import Settings
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import run_batch

FORMULAS = ["=cmd|' /C calc'!A0", "+SUM(1,1)", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]
SCRIPT = '<script>alert("x")</script><img src=x onerror=alert(1)>'
pytestmark = pytest.mark.usefixtures("retry_fast")


@pytest.fixture
async def batch(tmp_path: Path) -> Path:
    """A two-job batch: one done (a hostile title), one failed with hostile error text."""
    rows = [
        {"sku": "A1", "title": FORMULAS[0] + SCRIPT, "image_url": "https://media.flora.ai/1.jpg"},
        {"sku": "B2", "title": "+SUM(1,1)", "image_url": "https://media.flora.ai/2.jpg"},
    ]
    manifest = write_batch(tmp_path / "b", rows)
    failed = {
        "run_id": "run_2",
        "status": "failed",
        "error_code": '=HYPERLINK("http://x")',
        "error_message": "@SUM(1) " + SCRIPT,
        "charged_cost": 0,
    }
    flora = HostileFlora(create=[completed("https://cdn.test/1.png"), failed])
    flora.final = failed
    flora.media["/1.png"] = body(PNG)
    s = Settings(
        base_url="https://flora.test/api/v1", api_key="sk_test_x1234", min_poll=0.01, submit_rate=0
    )
    await run_batch(load_manifest(manifest), s, transport=flora.transport())
    return manifest


def cells(folder: Path) -> list[str]:
    """Every cell of results.csv and results.xlsx, header included."""
    with (folder / "results.csv").open(encoding="utf-8-sig", newline="") as fh:
        found = [c for row in csv.reader(fh) for c in row]
    sheet = load_workbook(folder / "results.xlsx").active
    assert sheet is not None
    for row in sheet.iter_rows():
        for cell in row:
            assert cell.data_type != "f", cell.value  # nothing stored as a formula
            found.append("" if cell.value is None else str(cell.value))
    return found


def test_report_cells_cannot_run_and_html_is_escaped(batch: Path, tmp_path: Path) -> None:
    """No CSV/XLSX cell starts like a formula; the contact sheet shows the script as text."""
    res = run_cli("report", str(batch), env=cli_env(home=tmp_path))
    assert res.code == 0, res.text
    folder = batch.parent / "results" / "_report"
    found = cells(folder)
    assert any("alert" in c for c in found)  # the hostile text is there, defused
    assert not [c for c in found if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    html = (folder / "index.html").read_text(encoding="utf-8")
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert" in html


def test_report_never_writes_through_a_planted_link(batch: Path, tmp_path: Path) -> None:
    """A symlink planted at the report's temporary name: the report is written, the victim not."""
    folder = batch.parent / "results" / "_report"
    folder.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, folder / ".index.html.tmp")
    res = run_cli("report", str(batch), env=cli_env(home=tmp_path))
    assert res.code == 0, res.text
    assert victim.read_text() == "precious"
    assert (folder / "index.html").is_file() and not (folder / "index.html").is_symlink()

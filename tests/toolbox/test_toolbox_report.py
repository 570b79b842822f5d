"""`flora-batch report`: the results table in input order, the contact sheet, the sidecars."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

from openpyxl import load_workbook
from toolbox_helpers import PRODUCTS, env, run_batch, write_batch

from flora_batch.manifest.rows import Row
from flora_batch.report.lines import Line, join, protect
from flora_batch.types import JobKey, JobRecord, JobState


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def test_table_follows_input_order_with_status_outputs_and_errors(showcase):
    """results.csv has one line per row and technique, in input order, joined to the ledger."""
    table = _csv(showcase.report / "results.csv")
    skus = [p["sku"] for p in PRODUCTS]
    assert [r["sku"] for r in table] == [s for s in skus for _ in range(3)]
    assert [r["technique"] for r in table[:3]] == ["studio-shot", "palette-pull", "product-motion"]
    failed = [r for r in table if r["status"] == "failed"]
    assert [(r["sku"], r["error_code"]) for r in failed] == [("SKU-007", "safety_blocked")] * 2
    assert all(r["error_message"] for r in failed)
    done = [r for r in table if r["status"] == "done"]
    assert len(done) == 16 and all(r["run_id"].startswith("run_") for r in done)
    for r in done:
        path = r["output:output_1"]
        assert not path.startswith("/") and (showcase.results / path).is_file()
        assert float(r["cost"]) > 0


def test_csv_and_xlsx_cells_cannot_run_as_formulas(showcase):
    """Cells starting with = + - @ get a leading apostrophe in CSV and XLSX; others do not."""
    titles = {r["sku"]: r["title"] for r in _csv(showcase.report / "results.csv")}
    assert titles["SKU-005"] == "'" + PRODUCTS[2]["title"]
    assert titles["SKU-001"] == "'+1 desk chair" and titles["SKU-003"] == "'-20% sneaker"
    assert titles["SKU-009"].startswith("'@") and titles["SKU-007"] == "Speckled mug"
    sheet = load_workbook(showcase.report / "results.xlsx").active
    header = [c.value for c in sheet[1]]
    column = header.index("title")
    cells = [row[column] for row in sheet.iter_rows(min_row=2)]
    assert all(c.data_type == "s" for c in cells)
    assert cells[6].value == "'" + PRODUCTS[2]["title"]
    assert sheet.max_row == 19
    statuses = [row[header.index("status")].value for row in sheet.iter_rows(min_row=2)]
    assert sorted(statuses[:3]) == ["done", "failed", "failed"] and set(statuses[3:]) == {"done"}
    assert protect("\tx") == "'\tx" and protect("\rx") == "'\rx" and protect(1.5) == 1.5


def test_jsonl_has_one_object_per_job(showcase):
    """results.jsonl mirrors the table: outputs with relative paths and checksums."""
    records = [json.loads(line) for line in (showcase.report / "results.jsonl").open()]
    assert len(records) == 18 and records[0]["fields"]["sku"] == "SKU-007"
    video = next(r for r in records if r["technique"] == "product-motion" and r["status"] == "done")
    [out] = video["outputs"]
    assert out["path"].endswith(".mp4") and len(out["sha256"]) == 64


def test_every_asset_has_a_provenance_sidecar(showcase):
    """Each output file has <file>.json beside it with technique, inputs, run id, cost, sha256."""
    assets = [p for p in showcase.results.rglob("*") if p.suffix in (".png", ".txt", ".mp4")]
    assert len(assets) == 16
    for asset in assets:
        meta = json.loads(asset.with_name(asset.name + ".json").read_text())
        assert meta["sha256"] == hashlib.sha256(asset.read_bytes()).hexdigest()
        assert meta["technique"] in asset.name and meta["run_id"].startswith("run_")
        assert meta["inputs"] and meta["run_cost"] > 0 and meta["completed_at"].endswith("+00:00")
        assert meta["path"] == asset.relative_to(showcase.results).as_posix()


def test_contact_sheet_is_escaped_and_self_contained(showcase):
    """index.html escapes row values and references only relative local files."""
    html = (showcase.report / "index.html").read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; lamp" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sources and not [s for s in sources if re.match(r"[a-z]+:", s) and s != "data:,"]
    assert html.count("<article") == 6 and html.count("<video") == 5
    assert html.count('data-group="failed"') == 1 and "<pre>" in html
    assert "<link rel=\"stylesheet\"" not in html and "@import" not in html


def test_report_out_dir_and_ledger_only(showcase, run_cli, tmp_path: Path):
    """--out writes elsewhere; --ledger without a manifest reports every job of the ledger."""
    out = tmp_path / "review"
    res = run_cli("report", str(showcase.manifest), "--out", str(out), env=showcase.env)
    assert res.code == 0, res.text
    assert {p.name for p in out.iterdir()} >= {"index.html", "results.csv", "results.xlsx"}
    assert '../' in (out / "index.html").read_text()
    ledger = showcase.manifest.parent / "shop.ledger.db"
    res = run_cli("report", "--ledger", str(ledger), "--out", str(tmp_path / "l"), env=showcase.env)
    assert res.code == 0, res.text
    table = _csv(tmp_path / "l" / "results.csv")
    assert len(table) == 18 and table[0]["sku"] == "SKU-007"
    assert all(not r["output:output_1"].startswith("/") for r in table if r["status"] == "done")


def test_report_of_a_half_done_batch_lists_rows_not_run(emulator, run_cli, tmp_path: Path):
    """Rows the cap left unsent are in the table as planned; rows never planned as not run."""
    server = emulator()
    manifest = write_batch(tmp_path / "b", extra="max_cost: 0.13\n")
    assert run_batch(run_cli, manifest, server).code == 4
    with (manifest.parent / "products.csv").open("a") as fh:
        fh.write("SKU-010,new row,https://media.flora.ai/t/new.jpg\n")
    res = run_cli("report", str(manifest), env=env(tmp_path))
    assert res.code == 0, res.text
    statuses = [r["status"] for r in _csv(manifest.parent / "results" / "_report" / "results.csv")]
    assert statuses == ["done", "done", "planned", "planned", "planned", "planned", "not run"]


def _record(row_index: int, row_id: str | None, updated: float, row: dict[str, str]) -> JobRecord:
    return JobRecord(
        key=JobKey(f"k{row_index}-{updated}"), idempotency_key="k", batch="b", technique="t",
        row_index=row_index, row_id=row_id, state=JobState.DONE, inputs=(), row=row,
        output_name="", updated_at=updated,
    )


def test_join_prefers_the_job_made_from_the_rows_current_cells():
    """An edited row joins its new job; rows keep input order whatever the ledger order."""
    rows = [Row(0, {"id": "b", "x": "2"}, 2), Row(1, {"id": "a", "x": "new"}, 3)]
    old = _record(1, "a", 5.0, {"id": "a", "x": "old"})
    new = _record(1, "a", 1.0, {"id": "a", "x": "new"})
    first = _record(0, "b", 1.0, {"id": "b", "x": "2"})
    lines = join(rows, ["t"], [old, new, first], "id")
    assert [line.record for line in lines] == [first, new]
    assert join(rows, ["t", "u"], [], "id")[3] == Line(2, rows[1].values, "u", None, "1")


def test_a_superseded_job_is_never_a_rows_and_follows_the_rows_marked():
    """A job of a row since edited (``Plan.gone()``) is not matched to the row, even when
    the row has no job of its own yet; it follows the rows, its status marked superseded."""
    rows = [Row(0, {"id": "a", "x": "new"}, 2)]
    old = _record(0, "a", 5.0, {"id": "a", "x": "old"})
    lines = join(rows, ["t"], [old], "id", frozenset({old.key}))
    assert [(line.record, line.status) for line in lines] == [
        (None, "not run"),
        (old, "done (superseded)"),
    ]
    assert lines[1].superseded and lines[1].group != lines[0].group

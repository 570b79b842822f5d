"""The report's tables with and without pandas: does pandas earn its place? (#18 §5)

    python -m bench.report_tables                 # 100,000 rows
    python -m bench.report_tables --rows 20000

``flora-batch report`` joins the ledger's jobs back to the input rows, in input order
(``report.lines.join``), and writes results.csv / .xlsx / .jsonl.  Each variant runs in
its own interpreter (``--child``) on the same synthetic batch (one technique, an id
column, one output per job, every job done), so its peak RSS (``wait4``) includes what
it imports; CPU is the child's ``process_time`` around the work, imports included.

* ``join: report.lines.join`` is the code (the jobs indexed by technique and row id, then
  each row looked up: until #18 each row scanned every job, 9 s at 10,000 rows and a
  quarter of an hour at 100,000); ``join: pandas merge`` is a ``DataFrame.merge`` with
  the same rules (an exact row match first, else the most recently updated job).
* ``write: csv+openpyxl+json`` is today's writers; ``write: pandas`` is ``to_csv``,
  ``to_excel`` (openpyxl underneath) and ``to_json(lines=True)`` of the same table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def batch(n: int) -> tuple[list[Any], list[Any]]:
    """``n`` rows and their ``n`` done jobs, the jobs in reverse order (as a ledger may)."""
    from flora_batch.manifest.cells import Row
    from flora_batch.types import JobKey, JobRecord, JobState, OutputRecord

    rows = [
        Row(
            i,
            {"sku": f"SKU-{i:06d}", "title": f"Item {i}", "image_url": f"https://m/{i}.jpg"},
            i + 2,
        )
        for i in range(n)
    ]
    records = [
        JobRecord(
            key=JobKey(f"fk1:{i:032x}"),
            idempotency_key=f"fk1:{i:032x}",
            batch="b",
            technique="studio-shot",
            row_index=i,
            row_id=f"SKU-{i:06d}",
            state=JobState.DONE,
            inputs=(),
            row=dict(rows[i].values),
            output_name="x",
            run_id=f"run_{i}",
            charged_cost=0.04,
            updated_at=1e9 + i,
            outputs=(
                OutputRecord(
                    "image",
                    "imageUrl",
                    "https://m/o.png",
                    path=f"/r/SKU-{i:06d}/a.png",
                    size=1000,
                    sha256="0" * 64,
                    content_type="image/png",
                ),
            ),
        )
        for i in reversed(range(n))
    ]
    return rows, records


def join_current(rows: list[Any], records: list[Any]) -> int:
    from flora_batch.report.lines import join

    return len(join(rows, ["studio-shot"], records, "sku"))


def join_pandas(rows: list[Any], records: list[Any]) -> int:
    import pandas as pd

    left = pd.DataFrame(
        {"number": [r.index + 1 for r in rows], "sku": [r.values.get("sku") for r in rows]}
    )
    left["technique"] = "studio-shot"
    right = pd.DataFrame(
        {
            "technique": [r.technique for r in records],
            "sku": [r.row_id for r in records],
            "updated": [r.updated_at or 0.0 for r in records],
            "attempt": [r.attempt for r in records],
            "at": range(len(records)),
        }
    )
    both = left.merge(right, on=["technique", "sku"], how="left")
    exact = [
        rows[n - 1].values == records[int(a)].row if a == a else False
        for n, a in zip(both["number"], both["at"], strict=True)
    ]
    both["exact"] = exact
    both = both.sort_values(["number", "exact", "updated", "attempt"], kind="stable")
    best = both.drop_duplicates(["number", "technique"], keep="last")
    return len(best)


def _lines(rows: list[Any], records: list[Any]) -> list[Any]:
    from flora_batch.report.lines import Line

    by_key = {rec.row_id: rec for rec in records}
    return [
        Line(r.index + 1, r.values, "studio-shot", by_key[r.values["sku"]], str(r.index))
        for r in rows
    ]


def write_current(n: int, out: Path) -> int:
    from flora_batch.report import files
    from flora_batch.report.lines import jsonl_records

    rows, records = batch(n)
    lines = _lines(rows, records)
    header, body = _table_of(lines)
    files._write_csv(out / "results.csv", header, body)
    files._write_xlsx(out / "results.xlsx", header, body)
    files._write_jsonl(out / "results.jsonl", jsonl_records(lines, Path("/r")))
    return len(body)


def _table_of(lines: list[Any]) -> tuple[list[str], list[list[Any]]]:
    from flora_batch.report.lines import results_table

    return results_table(lines, Path("/r"))


def write_pandas(n: int, out: Path) -> int:
    import pandas as pd

    from flora_batch.report.lines import jsonl_records, protect

    rows, records = batch(n)
    lines = _lines(rows, records)
    header, body = _table_of(lines)
    frame = pd.DataFrame(
        [[protect(v) for v in row] for row in body],
        columns=[protect(h) for h in header],
        dtype=object,
    )
    frame.to_csv(out / "results.csv", index=False, lineterminator="\r\n", encoding="utf-8-sig")
    frame.to_excel(out / "results.xlsx", index=False, sheet_name="results", engine="openpyxl")
    pd.DataFrame(jsonl_records(lines, Path("/r"))).to_json(
        out / "results.jsonl", orient="records", lines=True, force_ascii=False
    )
    return len(frame)


JOINS = {"join: report.lines.join": join_current, "join: pandas merge": join_pandas}
WRITERS = {"write: csv+openpyxl+json": write_current, "write: pandas": write_pandas}


def child(variant: str, n: int) -> None:
    """Run one variant here and print its CPU seconds as JSON."""
    start = time.process_time()
    if variant in JOINS:
        rows, records = batch(n)
        start = time.process_time()  # the batch is the same for every join: not counted
        JOINS[variant](rows, records)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            WRITERS[variant](n, Path(tmp))
    print(json.dumps({"cpu": time.process_time() - start}))


def run_child(variant: str, n: int) -> tuple[float, float]:
    """``(CPU seconds, peak RSS MiB)`` of one variant in a fresh interpreter."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.report_tables", "--child", variant, "--rows", str(n)],
        stdout=subprocess.PIPE,
        text=True,
    )
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{variant} failed")
    return json.loads(out)["cpu"], usage.ru_maxrss / 1024


def main() -> None:
    """Every variant at ``--rows``, as a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows)
        return
    print("| Variant | Rows | CPU | Peak RSS |\n|---|---|---|---|")
    for variant in [*JOINS, *WRITERS]:
        cpu, rss = run_child(variant, args.rows)
        print(f"| {variant} | {args.rows:,} | {cpu:.2f} s | {rss:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()

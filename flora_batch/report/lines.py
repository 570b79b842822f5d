"""``flora-batch report``: the ledger's jobs joined back to the input rows, as files.

The middle is pure: ``join`` / ``lines_from_ledger`` pair each input row (in input
order) with its job record, ``results_table`` and ``jsonl_records`` turn those lines
into cells and objects, ``sidecar`` describes one asset's provenance, and
``report_html.contact_sheet`` renders the HTML.  They read no clock, no disk and no
database.  ``write_report`` at the bottom is the edge: it reads the text outputs it
shows inline and writes ``results.csv``, ``results.xlsx``, ``results.jsonl``,
``index.html`` and one ``<asset>.json`` beside each output file.

CSV and XLSX cells that a spreadsheet would run as a formula (starting with ``=``,
``+``, ``-``, ``@``, tab or carriage return) get a leading apostrophe.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

from ..errors import UsageError
from ..manifest.rows import Row
from ..manifest.sources import is_placeholder, upload_key, upload_keys
from ..types import JobRecord, OutputRecord, UploadRecord

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
FIXED_COLUMNS = ("row", "technique", "status", "run_id", "cost", "error_code", "error_message")
TEXT_PREVIEW_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the report: an input row through one technique, and its job (if any)."""

    number: int  # the row's 1-based position in the input
    row: Mapping[str, Any]
    technique: str
    record: JobRecord | None
    group: str = ""  # lines of one input row share it (one contact-sheet card per row)
    superseded: bool = False  # a job of a row since edited or removed (``Plan.gone()``)

    @property
    def status(self) -> str:
        """The job's state, or ``not run`` for a row the ledger has no job for; a
        superseded job's state says so (``done (superseded)``)."""
        if self.record is None:
            return "not run"
        state = self.record.state.value
        return f"{state} (superseded)" if self.superseded else state


def _best(candidates: list[JobRecord], row: Row) -> JobRecord | None:
    """The job made from exactly this row's cells, else the most recently updated one."""
    exact = [r for r in candidates if r.row == row.values]
    pool = exact or candidates
    return max(pool, key=lambda r: (r.updated_at or 0.0, r.attempt), default=None)


def join(
    rows: Sequence[Row],
    techniques: Sequence[str],
    records: Iterable[JobRecord],
    id_column: str | None,
    superseded: frozenset[str] = frozenset(),
) -> list[Line]:
    """Each row through each technique, in input order, with its job record (or None).

    The jobs in ``superseded`` (of rows since edited or removed) are never a row's: they
    follow the rows, one line each, marked, so a row shows its own job and no other.
    A row's jobs are those of its technique and its id (``id_column``), else of its
    position; the jobs are indexed by that first, so 100,000 rows take a second, not a
    quarter of an hour (docs/performance.md, "A lean install": bench/report_tables.py).
    """
    by_row: dict[tuple[str, object], list[JobRecord]] = {}  # (technique, row id or index)
    gone: list[JobRecord] = []
    for rec in records:
        if rec.key in superseded:
            gone.append(rec)
        else:
            place = rec.row_id if id_column is not None else rec.row_index
            by_row.setdefault((rec.technique, place), []).append(rec)
    lines: list[Line] = []
    for row in rows:
        place = row.values.get(id_column) if id_column is not None else row.index
        for slug in techniques:
            found = by_row.get((slug, place), [])
            lines.append(Line(row.index + 1, row.values, slug, _best(found, row), str(row.index)))
    return lines + lines_from_ledger(gone, frozenset(r.key for r in gone))


def lines_from_ledger(
    records: Iterable[JobRecord], superseded: frozenset[str] = frozenset()
) -> list[Line]:
    """Report lines straight from the ledger (no manifest): each job with the row it kept
    (those in ``superseded`` marked so)."""
    ordered = sorted(records, key=lambda r: (r.batch, r.row_index, r.technique, r.key))
    return [
        Line(
            r.row_index + 1,
            r.row,
            r.technique,
            r,
            f"{r.batch}:{r.row_index}" + (f":{r.key}" if r.key in superseded else ""),
            superseded=r.key in superseded,
        )
        for r in ordered
    ]


# --- cells -----------------------------------------------------------------------------


def protect(value: Any) -> Any:
    """A cell value a spreadsheet will not run as a formula (strings only change)."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def relative(path: str | None, root: Path) -> str:
    """An output path relative to the results folder (as given when it is outside)."""
    if not path:
        return ""
    try:
        return PurePath(path).relative_to(root).as_posix()
    except ValueError:
        return path


def common_root(records: Iterable[JobRecord]) -> Path:
    """The results folder guessed from the ledger: the deepest folder every output is in.

    Raises:
        UsageError: no job has an output file yet (give ``--results``).
    """
    parents = [str(PurePath(o.path).parent) for r in records for o in r.outputs if o.path]
    if not parents:
        raise UsageError("no output files in the ledger yet: give --results DIR")
    return Path(os.path.commonpath(parents))


def _input_columns(lines: Sequence[Line]) -> list[str]:
    seen: dict[str, None] = {}
    for line in lines:
        seen.update(dict.fromkeys(line.row))
    return list(seen)


def _output_ids(lines: Sequence[Line]) -> list[str]:
    seen: dict[str, None] = {}
    for line in lines:
        if line.record:
            seen.update(dict.fromkeys(o.output_id for o in line.record.outputs))
    return list(seen)


def _header_name(column: str) -> str:
    clash = column in FIXED_COLUMNS or column.startswith("output:")
    return f"input:{column}" if clash else column


def results_table(lines: Sequence[Line], root: Path) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the results table, in input order (cells not yet protected)."""
    inputs = _input_columns(lines)
    outputs = _output_ids(lines)
    header = [
        "row",
        *(_header_name(c) for c in inputs),
        "technique",
        "status",
        *(f"output:{o}" for o in outputs),
        "run_id",
        "cost",
        "error_code",
        "error_message",
    ]
    body = [_table_row(line, inputs, outputs, root) for line in lines]
    if any(line.record and line.record.worker_id for line in lines):  # `flora-batch worker`s
        header.append("worker")
        for row, line in zip(body, lines, strict=True):
            row.append(line.record.worker_id if line.record else None)
    return header, body


def _table_row(line: Line, inputs: list[str], outputs: list[str], root: Path) -> list[Any]:
    rec = line.record
    paths = {o.output_id: relative(o.path, root) for o in (rec.outputs if rec else ())}
    return [
        line.number,
        *(_cell_text(line.row.get(c)) for c in inputs),
        line.technique,
        line.status,
        *(paths.get(o, "") for o in outputs),
        rec.run_id if rec else None,
        rec.charged_cost if rec else None,
        rec.error_code if rec else None,
        rec.error_message if rec else None,
    ]


def _cell_text(value: Any) -> str:
    return "" if value is None else str(value)


def _output_dict(out: OutputRecord, root: Path) -> dict[str, Any]:
    return {
        "id": out.output_id,
        "type": out.type,
        "path": relative(out.path, root) or None,
        "size": out.size,
        "sha256": out.sha256,
        "content_type": out.content_type,
    }


def jsonl_records(lines: Sequence[Line], root: Path) -> list[dict[str, Any]]:
    """One JSON object per report line (``results.jsonl``)."""
    out: list[dict[str, Any]] = []
    for line in lines:
        rec = line.record
        out.append(
            {
                "row": line.number,
                "fields": dict(line.row),
                "technique": line.technique,
                "status": line.status,
                "outputs": [_output_dict(o, root) for o in rec.outputs] if rec else [],
                "run_id": rec.run_id if rec else None,
                "cost": rec.charged_cost if rec else None,
                "quoted_cost": rec.quoted_cost if rec else None,
                "error_code": rec.error_code if rec else None,
                "error_message": rec.error_message if rec else None,
                "batch": rec.batch if rec else None,
                "key": rec.key if rec else None,
                "attempt": rec.attempt if rec else None,
                "worker_id": rec.worker_id if rec else None,
                "lease_until": rec.lease_until if rec else None,
            }
        )
    return out


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


UPLOAD_COLUMNS = ("source", "sha256", "size", "content_type", "state", "asset_id", "url", "error")


def uploaded_inputs(
    rec: JobRecord, uploads: Mapping[str, UploadRecord]
) -> dict[str, dict[str, Any]]:
    """The job's inputs that were local files or web images: where each came from, and
    the FLORA asset it became (the job's ``inputs`` hold only the placeholder)."""
    out: dict[str, dict[str, Any]] = {}
    for item in rec.inputs:
        if is_placeholder(item.value):
            up = uploads.get(upload_key(item.value))
            out[item.id] = {c: getattr(up, c) for c in UPLOAD_COLUMNS} if up else {}
    return out


def upload_table(
    lines: Sequence[Line], uploads: Mapping[str, UploadRecord]
) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of ``uploads.csv``: every input file the report's jobs used."""
    used = dict.fromkeys(k for ln in lines if ln.record for k in upload_keys(ln.record.inputs))
    body = [[getattr(uploads[k], c) for c in UPLOAD_COLUMNS] for k in used if k in uploads]
    return list(UPLOAD_COLUMNS), body


def sidecar(
    rec: JobRecord,
    out: OutputRecord,
    root: Path,
    uploads: Mapping[str, UploadRecord] | None = None,
) -> dict[str, Any]:
    """The provenance of one asset: what made it, from which inputs, for how much."""
    data = {
        "file": PurePath(out.path or "").name,
        "path": relative(out.path, root),
        "output_id": out.output_id,
        "type": out.type,
        "content_type": out.content_type,
        "size": out.size,
        "sha256": out.sha256,
        "technique": rec.technique,
        "batch": rec.batch,
        "job_key": rec.key,
        "run_id": rec.run_id,
        "attempt": rec.attempt,
        "run_cost": rec.charged_cost,
        "quoted_cost": rec.quoted_cost,
        "inputs": {i.id: i.value for i in rec.inputs},
        "row": dict(rec.row),
        "row_number": rec.row_index + 1,
        "source": rec.source,
        "submitted_at": iso(rec.submitted_at),
        "completed_at": iso(rec.completed_at),
        "generator": "flora-batch report",
    }
    if rec.worker_id is not None:
        data["worker_id"] = rec.worker_id  # the `flora-batch worker` that made it
    extra = uploaded_inputs(rec, uploads or {})
    return data | {"uploaded_inputs": extra} if extra else data


def summary(lines: Sequence[Line]) -> dict[str, Any]:
    """Counts by status and money spent over the report's lines."""
    counts: dict[str, int] = {}
    for line in lines:
        counts[line.status] = counts.get(line.status, 0) + 1
    spent = sum(line.record.charged_cost or 0.0 for line in lines if line.record)
    return {"lines": len(lines), "statuses": counts, "spent": round(spent, 6)}

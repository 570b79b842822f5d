"""The report's files: ``results.csv``, ``results.xlsx``, ``results.jsonl``, ``uploads.csv``,
the contact sheet and the sidecar beside each output, written atomically from ``lines``.

The edge of the report: ``lines`` builds every table from the ledger and the rows
(pure), ``html`` the contact sheet; this module reads text outputs and writes the files.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..types import JobRecord, OutputRecord, UploadRecord
from .html import contact_sheet
from .lines import (
    TEXT_PREVIEW_CHARS,
    Line,
    iso,
    jsonl_records,
    protect,
    results_table,
    sidecar,
    summary,
    upload_table,
)

# --- the edge: reading text outputs and writing the files ----------------------------------


@dataclass(frozen=True, slots=True)
class Written:
    """What ``write_report`` wrote."""

    folder: Path
    files: tuple[Path, ...]
    sidecars: int


def write_report(
    lines: Sequence[Line],
    *,
    root: Path,
    out_dir: Path,
    title: str,
    generated: float,
    uploads: Mapping[str, UploadRecord] | None = None,
    unit: str = "usd",
) -> Written:
    """Write the results table (CSV, XLSX, JSONL), ``index.html`` and the asset sidecars.

    ``unit`` is what the costs count (``usd`` or ``credits``): the contact sheet spells
    them so; the tables hold plain numbers.

    With ``uploads`` (the ledger's), also ``uploads.csv``: the input files the jobs used
    and the FLORA assets they became.
    """
    root, out_dir = root.absolute(), out_dir.absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    header, body = results_table(lines, root)
    files = [
        _write_csv(out_dir / "results.csv", header, body),
        _write_xlsx(out_dir / "results.xlsx", header, body),
        _write_jsonl(out_dir / "results.jsonl", jsonl_records(lines, root)),
    ]
    html = contact_sheet(
        lines,
        out_dir=out_dir,
        title=title,
        summary=summary(lines),
        texts=_read_texts(lines),
        generated=iso(generated) or "",
        unit=unit,
    )
    files.append(_atomic(out_dir / "index.html", html.encode("utf-8")))
    up_header, up_body = upload_table(lines, uploads or {})
    if up_body:
        files.append(_write_csv(out_dir / "uploads.csv", up_header, up_body))
    return Written(out_dir, tuple(files), _write_sidecars(lines, root, uploads or {}))


def _atomic(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover or a planted symlink: never written through
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    return path


def _write_csv(path: Path, header: list[str], body: list[list[Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([protect(h) for h in header])
    writer.writerows([[protect("" if v is None else v) for v in row] for row in body])
    return _atomic(path, buf.getvalue().encode("utf-8-sig"))


def _write_xlsx(path: Path, header: list[str], body: list[list[Any]]) -> Path:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "results"
    sheet.append([protect(h) for h in header])
    for row in body:
        sheet.append([protect(v) for v in row])
    sheet.freeze_panes = "A2"
    tmp = path.with_name(f".{path.name}.tmp")
    book.save(tmp)
    os.replace(tmp, path)
    return path


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return _atomic(path, text.encode("utf-8"))


def _assets(lines: Sequence[Line]) -> Iterator[tuple[JobRecord, OutputRecord, Path]]:
    """Every output file on disk, with its job."""
    for rec in (line.record for line in lines if line.record is not None):
        for out in rec.outputs:
            if out.path and Path(out.path).is_file():
                yield rec, out, Path(out.path)


def _read_texts(lines: Sequence[Line]) -> dict[str, str]:
    """The text outputs' contents (the start of each), keyed by their path."""
    texts: dict[str, str] = {}
    for _, out, path in _assets(lines):
        if out.type == "text":
            with path.open(encoding="utf-8", errors="replace") as fh:
                text = fh.read(TEXT_PREVIEW_CHARS + 1)
            cut = len(text) > TEXT_PREVIEW_CHARS
            texts[str(path)] = text[:TEXT_PREVIEW_CHARS] + ("\n…" if cut else "")
    return texts


def _write_sidecars(lines: Sequence[Line], root: Path, uploads: Mapping[str, UploadRecord]) -> int:
    count = 0
    for rec, out, path in _assets(lines):
        data = json.dumps(sidecar(rec, out, root, uploads), indent=2, ensure_ascii=False) + "\n"
        _atomic(path.with_name(path.name + ".json"), data.encode("utf-8"))
        count += 1
    return count

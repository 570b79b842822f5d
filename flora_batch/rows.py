"""Rows from a spreadsheet: CSV, XLSX, JSON Lines, Parquet, or a list inside the manifest.

Every format ends as the same thing: a list of column names and ``Row`` values whose
cells are stripped strings, each row knowing the line it came from, so a problem can be
reported as ``products.csv:14:image_url: ...``.  Reading is the only I/O here.

The readers are the ones pandas itself would call (``csv``, openpyxl, pyarrow, ``json``),
used directly: pandas loses line numbers (a quoted cell may span lines) and converts
cells on its own (``NA``, floats) before we could look at them.

Rules shared by all formats:

* Cells become text: ``None``/NaN -> ``""``, booleans -> ``true``/``false``, whole
  floats -> ``5`` (not ``5.0``), other floats in their shortest round-trip form, dates
  in ISO 8601.  Surrounding whitespace is stripped.  Lists and objects are refused.
* Rows whose cells are all empty are skipped; ``Row.index`` counts the rows kept.
* Column names are stripped; a blank or repeated name is an error, except that a
  column with neither a name nor any value is ignored.
* A cell over 100 kB (UTF-8) is an error: nothing a technique takes is that long.
* A rows file over 512 MiB, or with more than 100,000 rows, is refused before its rows
  are built, so a runaway export fails fast in bounded memory: split it into batches.
* Text files (CSV, JSONL) must be UTF-8 (a BOM is fine; UTF-16 with a BOM is read
  too).  Other bytes are refused with a note that names the likely encoding, because a
  guessed encoding would silently change the text you pay for; set ``encoding:`` on
  the rows entry to read, say, Windows-1252 exports.
* XLSX: the first worksheet, or ``sheet:``.  A formula cell gives the value Excel last
  saved with it (what you see in Excel); a formula with no saved value (a file written
  by a script and never opened) or an error value (``#N/A``) is an error at its cell.
  Numbers are read as stored, not as displayed: format id columns as Text to keep
  leading zeros.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from .errors import ManifestError, ManifestProblems

#: Largest cell accepted, in UTF-8 bytes.
MAX_CELL_BYTES = 100_000
#: Most rows one rows file may hold (the ledger, plan and report keep a batch in memory).
MAX_ROWS = 100_000
#: Largest rows file read, in bytes (it is read whole before parsing).
MAX_FILE_BYTES = 512 * 1024 * 1024
#: File suffix -> format name.
FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_SNIFF_BYTES = 8192
_SNIFF_CHARS = 1 << 20  # the header line is looked for in the first MiB
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


@dataclass(frozen=True, slots=True)
class Row:
    """One row: its 0-based ``index`` among the rows kept, its cells, and where it came from.

    ``line`` is 1-based: the line the record starts on (CSV, JSONL), the spreadsheet
    row number counting the header (XLSX), the record number (Parquet), or the line of
    the list item (rows written in the manifest).
    """

    index: int
    values: dict[str, str]
    line: int


@dataclass(frozen=True, slots=True)
class RowsSource:
    """Where a manifest's rows come from: a file, or rows written inline in the manifest.

    ``path`` is already resolved against the manifest's folder.  For inline rows,
    ``inline`` holds the parsed rows and ``columns`` their column names.  ``line`` is
    the manifest line of the ``rows:`` key, for messages.
    """

    path: Path | None = None
    encoding: str | None = None
    sheet: str | None = None
    inline: tuple[Row, ...] = ()
    columns: tuple[str, ...] = ()
    line: int | None = None

    @property
    def format(self) -> str:
        """``csv``, ``xlsx``, ``jsonl``, ``parquet``, ``inline``, or ``""`` if unknown."""
        if self.path is None:
            return "inline"
        return FORMATS.get(self.path.suffix.lower(), "")


def load_rows(
    source: RowsSource | Path, manifest_path: Path | None = None
) -> tuple[list[str], list[Row]]:
    """Read every row of a rows source.

    Args:
        source: the manifest's ``rows`` (or a bare file path).
        manifest_path: where inline rows were written, only for messages.

    Raises:
        ManifestError: the file is missing, empty, not text, in an unknown format or
            encoding, or has bad columns; ``ManifestProblems`` when several cells are bad.
    """
    if isinstance(source, Path):
        source = RowsSource(path=source)
    if source.path is None:
        return list(source.columns), list(source.inline)
    path = source.path
    kind = source.format
    if not kind:
        known = ", ".join(sorted(set(FORMATS)))
        raise ManifestError(
            f"cannot read {path.suffix or 'files without a suffix'}: use one of {known}",
            path=str(path),
        )
    data = _read_bytes(path)
    if kind == "xlsx":
        return _load_xlsx(path, source.sheet)
    if kind == "parquet":
        return _load_parquet(path)
    text = decode_text(data, str(path), source.encoding)
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ManifestError(
            "contains a NUL character: is this a text file?", path=str(path), line=line
        )
    return _load_jsonl(text, str(path)) if kind == "jsonl" else _load_csv(text, str(path))


def _read_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ManifestError(
                f"the rows file is {size:,} bytes; the limit is {MAX_FILE_BYTES:,}: "
                "split it into several batches",
                path=str(path),
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError("rows file not found", path=str(path)) from None
    except IsADirectoryError:
        raise ManifestError("is a folder, not a rows file", path=str(path)) from None
    except OSError as exc:
        raise ManifestError(
            f"cannot read the rows file: {exc.strerror or exc}", path=str(path)
        ) from exc
    if not data.strip():
        raise ManifestError("the rows file is empty", path=str(path))
    return data


# --- text and cells --------------------------------------------------------------------


def decode_text(data: bytes, path: str, encoding: str | None = None) -> str:
    """Bytes of a text file as text: UTF-8 (BOM allowed), UTF-16 with a BOM, or ``encoding``.

    Raises:
        ManifestError: binary data, or bytes that are not valid in the encoding; the
            message names the likely encoding and how to declare it.
    """
    if encoding:
        return _decode_declared(data, path, encoding)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return _decode_declared(data, path, "utf-16")
    _refuse_binary(data, path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, col = _position(data, exc.start)
        guess = (
            "Windows-1252 (encoding: cp1252)"
            if _decodes(data, "cp1252")
            else "Latin-1 (encoding: latin-1)"
        )
        raise ManifestError(
            f"is not UTF-8 (byte 0x{data[exc.start]:02x}); it is probably {guess}. "
            "Re-save it as UTF-8 (Excel: 'CSV UTF-8') or declare the encoding: "
            "rows: {path: <file>, encoding: cp1252}",
            path=path,
            line=line,
            column=col,
        ) from None


def _decode_declared(data: bytes, path: str, encoding: str) -> str:
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ManifestError(f"unknown encoding {encoding!r}", path=path) from None
    try:
        return data.decode("utf-8-sig" if name == "utf-8" else name)
    except UnicodeDecodeError as exc:
        line, col = _position(data, exc.start)
        raise ManifestError(
            f"is not valid {encoding} (byte 0x{data[exc.start]:02x})",
            path=path,
            line=line,
            column=col,
        ) from None


def _refuse_binary(data: bytes, path: str) -> None:
    head = data[:_SNIFF_BYTES]
    if head.startswith(b"PK\x03\x04"):
        raise ManifestError(
            "is a zip file (an Excel workbook?), not text: name it .xlsx", path=path
        )
    if head.startswith(b"PAR1"):
        raise ManifestError("is a Parquet file, not text: name it .parquet", path=path)
    if b"\x00" in head:
        raise ManifestError("is not a text file (it contains binary data)", path=path)


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def _position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a byte offset."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def cell_text(value: object) -> str:
    """A cell as the stripped text flora-batch works with (see the module docstring).

    Raises:
        ValueError: lists, objects, undecodable bytes, or anything else that is not a
            scalar.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, datetime):
        midnight = value.time() == time(0) and value.tzinfo is None
        return value.date().isoformat() if midnight else value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8").strip()
    raise ValueError(f"a {type(value).__name__} is not a cell value: use text or a number")


def _float_text(value: float) -> str:
    if math.isnan(value):
        return ""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


# --- the table every format ends as -----------------------------------------------------


@dataclass
class _Table:
    """Column names and raw records, before cells become text."""

    path: str
    header: list[object]
    header_line: int | None
    records: list[tuple[int, list[object]]]
    problems: list[ManifestError]


def _finish(table: _Table) -> tuple[list[str], list[Row]]:
    """Check the columns, convert the cells, drop empty rows; raise what was found."""
    names = [_header_name(h) for h in table.header]
    width = len(names)
    for line, cells in table.records:
        if any(_nonblank(c) for c in cells[width:]):
            msg = f"this row has {len(cells)} cells but the header has {width} columns"
            table.problems.append(ManifestError(msg, path=table.path, line=line))
    keep = [i for i, name in enumerate(names) if name or _column_used(table.records, i)]
    _check_names([names[i] for i in keep], keep, table)
    columns = [names[i] for i in keep]
    rows = _rows(table, keep, columns)
    if table.problems:
        _raise(table.problems)
    return columns, rows


def _header_name(value: object) -> str:
    try:
        return cell_text(value)
    except ValueError:
        return ""


def _nonblank(value: object) -> bool:
    """Whether a raw cell holds anything (an unreadable value counts as something)."""
    try:
        return bool(cell_text(value))
    except ValueError:
        return value is not None


def _column_used(records: list[tuple[int, list[object]]], i: int) -> bool:
    return any(_nonblank(cells[i]) for _, cells in records if i < len(cells))


def _check_names(names: list[str], positions: list[int], table: _Table) -> None:
    seen: dict[str, int] = {}
    for name, pos in zip(names, positions, strict=True):
        if not name:
            msg = f"column {pos + 1} has values but no name"
        elif name in seen:
            msg = f"column {pos + 1} repeats the name {name!r} of column {seen[name] + 1}"
        else:
            seen[name] = pos
            continue
        table.problems.append(
            ManifestError(msg, path=table.path, line=table.header_line, column=pos + 1)
        )


def _rows(table: _Table, keep: list[int], columns: list[str]) -> list[Row]:
    rows: list[Row] = []
    for line, cells in table.records:
        values = {
            name: _cell(cells, i, name, line, table) for i, name in zip(keep, columns, strict=True)
        }
        if any(values.values()):
            rows.append(Row(index=len(rows), values=values, line=line))
    return rows


def _cell(cells: list[object], i: int, name: str, line: int, table: _Table) -> str:
    if i >= len(cells):
        return ""
    try:
        text = cell_text(cells[i])
    except (ValueError, UnicodeDecodeError) as exc:
        table.problems.append(ManifestError(str(exc), path=table.path, line=line, column=name))
        return ""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_CELL_BYTES:
        msg = f"cell is {size:,} bytes; the limit is {MAX_CELL_BYTES:,}"
        table.problems.append(ManifestError(msg, path=table.path, line=line, column=name))
        return ""
    return text


def rows_from_cells(
    path: str, columns: list[object], records: list[tuple[int, list[object]]]
) -> tuple[list[str], list[Row]]:
    """Rows from raw cells (``(line, cells)`` records), with every rule of the module docstring.

    Used for rows written inline in a manifest, so they behave exactly like a file's.

    Raises:
        ManifestError: bad column names or cells (``ManifestProblems`` for several).
    """
    return _finish(_Table(path, columns, None, records, []))


def too_many_rows(path: str, line: int) -> ManifestError:
    """The error for a rows source over ``MAX_ROWS``, at the first row past the limit."""
    return ManifestError(
        f"more than {MAX_ROWS:,} rows: split the file into batches of at most "
        f"{MAX_ROWS:,} rows (one manifest each)",
        path=path,
        line=line,
    )


def _capped(
    records: Iterable[tuple[int, list[str]]], path: str
) -> Iterator[tuple[int, list[str]]]:
    """Pass records through, raising ``too_many_rows`` past ``MAX_ROWS`` of them."""
    for count, (line, cells) in enumerate(records, start=1):
        if count > MAX_ROWS:
            raise too_many_rows(path, line)
        yield line, cells


def _raise(problems: list[ManifestError]) -> None:
    raise problems[0] if len(problems) == 1 else ManifestProblems(problems)


# --- CSV -------------------------------------------------------------------------------


def _sniff_delimiter(text: str) -> str:
    """The delimiter of the header line: comma unless tabs or semicolons clearly win."""
    first = next((line for line in text[:_SNIFF_CHARS].splitlines() if line.strip()), "")
    counts = {d: first.count(d) for d in (",", "\t", ";")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


def _lines(text: str) -> Iterator[str]:
    """What ``io.StringIO(text, newline="")`` yields, without a 4-bytes-a-character copy."""
    return (match.group() for match in _LINE.finditer(text))


def _csv_records(text: str, path: str) -> Iterator[tuple[int, list[str]]]:
    """Non-blank records with the line each starts on."""
    reader = csv.reader(_lines(text), delimiter=_sniff_delimiter(text))
    end = 0
    while True:
        start = end + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_error(exc, path, start) from None
        end = reader.line_num
        if record and any(cell.strip() for cell in record):
            yield start, record


def _csv_error(exc: csv.Error, path: str, line: int) -> ManifestError:
    text = str(exc)
    if "field larger than field limit" in text:
        text = f"a cell is over the {MAX_CELL_BYTES:,}-byte limit"
    return ManifestError(f"cannot parse this CSV line: {text}", path=path, line=line)


def _load_csv(text: str, path: str) -> tuple[list[str], list[Row]]:
    records = _csv_records(text, path)
    first = next(records, None)
    if first is None:
        raise ManifestError("the rows file is empty", path=path)
    line, header = first
    rest: list[tuple[int, list[object]]] = [
        (n, list(cells)) for n, cells in _capped(records, path)
    ]
    return _finish(_Table(path, list(header), line, rest, []))


# --- JSON Lines ------------------------------------------------------------------------


def _load_jsonl(text: str, path: str) -> tuple[list[str], list[Row]]:
    problems: list[ManifestError] = []
    objects: list[tuple[int, dict[str, object]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            obj = _json_object(line, path, number, problems)
            if obj is not None:
                objects.append((number, obj))
            if len(objects) > MAX_ROWS:
                raise too_many_rows(path, number)
    columns = list(dict.fromkeys(key for _, obj in objects for key in obj))
    records: list[tuple[int, list[object]]] = [
        (n, [obj.get(c) for c in columns]) for n, obj in objects
    ]
    if not columns and not problems:
        raise ManifestError("the rows file has no columns", path=path)
    return _finish(_Table(path, list(columns), None, records, problems))


def _json_object(
    line: str, path: str, number: int, problems: list[ManifestError]
) -> dict[str, object] | None:
    try:
        obj = json.loads(line, object_pairs_hook=_pairs)
    except json.JSONDecodeError as exc:
        problems.append(
            ManifestError(f"not valid JSON: {exc.msg}", path=path, line=number, column=exc.colno)
        )
        return None
    except ValueError as exc:  # a duplicate key (_pairs) or a number too long to read
        problems.append(ManifestError(str(exc), path=path, line=number))
        return None
    if not isinstance(obj, dict):
        problems.append(
            ManifestError("each line must be a JSON object ({...})", path=path, line=number)
        )
        return None
    return obj


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        name = key.strip()
        if name in out:
            raise ValueError(f"key {name!r} appears twice in this object")
        out[name] = value
    return out


# --- XLSX ------------------------------------------------------------------------------


@dataclass
class _Sheet:
    """A worksheet's values by (0-based) position, with its formula and error cells."""

    grid: list[list[object]]
    formulas: dict[tuple[int, int], str]
    errors: dict[tuple[int, int], str]


def _load_xlsx(path: Path, sheet: str | None) -> tuple[list[str], list[Row]]:
    book = _xlsx_sheet(path, sheet, data_only=False)
    problems = [
        _cell_problem(str(path), rc, f"the cell holds the error value {e}")
        for rc, e in book.errors.items()
    ]
    if book.formulas:
        _use_cached(book, _xlsx_sheet(path, sheet, data_only=True), str(path), problems)
    numbered = [
        (n, cells) for n, cells in enumerate(book.grid, start=1) if any(_nonblank(c) for c in cells)
    ]
    if not numbered:
        raise ManifestError("the worksheet is empty", path=str(path))
    (header_line, header), *records = numbered
    return _finish(_Table(str(path), header, header_line, records, problems))


def _cell_problem(path: str, rc: tuple[int, int], message: str) -> ManifestError:
    return ManifestError(message, path=path, line=rc[0] + 1, column=_column_letter(rc[1]))


def _use_cached(book: _Sheet, cached: _Sheet, path: str, problems: list[ManifestError]) -> None:
    """Put each formula's saved value in its cell, or report why there is none."""
    for (r, c), formula in book.formulas.items():
        value = cached.grid[r][c] if r < len(cached.grid) and c < len(cached.grid[r]) else None
        if (r, c) in cached.errors:
            problems.append(
                _cell_problem(
                    path, (r, c), f"formula {formula} gives the error {cached.errors[(r, c)]}"
                )
            )
        elif value is None:
            msg = (
                f"formula {formula} has no saved value: open and save the file in Excel "
                "or LibreOffice, or paste values"
            )
            problems.append(_cell_problem(path, (r, c), msg))
        book.grid[r][c] = value


def _xlsx_sheet(path: Path, sheet: str | None, *, data_only: bool) -> _Sheet:
    """Read one worksheet; with ``data_only`` formulas give the values Excel saved."""
    import openpyxl

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openpyxl warns about styles and extensions it skips
            book = openpyxl.load_workbook(path, read_only=True, data_only=data_only)
            try:
                return _read_sheet(_worksheet(book, sheet, path), str(path))
            finally:
                book.close()
    except ManifestError:
        raise
    except Exception as exc:  # openpyxl raises many types on a damaged file; all mean the same
        raise ManifestError(
            f"cannot read this as an Excel workbook: {exc}", path=str(path)
        ) from exc


def _worksheet(book: Any, sheet: str | None, path: Path) -> Any:
    if sheet is None:
        if not book.worksheets:
            raise ManifestError("the workbook has no worksheet", path=str(path))
        return book.worksheets[0]
    if sheet not in book.sheetnames:
        raise ManifestError(
            f"no sheet named {sheet!r}; the sheets are {', '.join(book.sheetnames)}", path=str(path)
        )
    return book[sheet]


def _read_sheet(ws: Any, path: str) -> _Sheet:
    ws.reset_dimensions()  # the file's <dimension> may be wrong; never let it hide cells
    out = _Sheet([], {}, {})
    for r, row in enumerate(ws.iter_rows(min_row=1, min_col=1)):
        if r > MAX_ROWS:  # row 1 is the header
            raise too_many_rows(path, r + 1)
        out.grid.append([cell.value for cell in row])
        for c, cell in enumerate(row):
            if cell.data_type == "f":
                out.formulas[(r, c)] = _formula_text(cell.value)
            elif cell.data_type == "e":
                out.errors[(r, c)] = str(cell.value)
    return out


def _formula_text(value: object) -> str:
    text = getattr(value, "text", value)  # ArrayFormula keeps its formula in .text
    return str(text)[:80]


def _column_letter(index: int) -> str:
    """Spreadsheet column letters of a 0-based column index: 0 -> A, 26 -> AA."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


# --- Parquet ---------------------------------------------------------------------------


def _load_parquet(path: Path) -> tuple[list[str], list[Row]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and more on bad files
        raise ManifestError(f"cannot read this as a Parquet file: {exc}", path=str(path)) from exc
    columns: list[object] = list(table.column_names)
    if not columns:
        raise ManifestError("the Parquet file has no columns", path=str(path))
    if table.num_rows > MAX_ROWS:
        raise too_many_rows(str(path), MAX_ROWS + 1)
    data = [table.column(i).to_pylist() for i in range(table.num_columns)]
    records = _transpose(data, table.num_rows)
    return _finish(_Table(str(path), columns, None, records, []))


def _transpose(columns: Iterable[list[object]], count: int) -> list[tuple[int, list[object]]]:
    cells = list(zip(*columns, strict=True)) if count else []
    return [(i + 1, list(row)) for i, row in enumerate(cells)]

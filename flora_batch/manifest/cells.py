"""Cells and the table every rows format ends as: column names and ``Row`` values.

Each reader (``rows_text`` for CSV and JSON Lines, ``rows_sheets`` for XLSX and
Parquet, the manifest for inline rows) hands ``finish`` a ``Table`` of raw cells; the
rules of ``rows.py``'s docstring (cells as stripped text, empty rows skipped, column
names checked, the cell size limit) are applied here, once for every format.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from ..errors import ManifestError, ManifestProblems

#: Largest cell accepted, in UTF-8 bytes.
MAX_CELL_BYTES = 100_000
#: A text of at most this many characters is under ``MAX_CELL_BYTES`` whatever it holds
#: (UTF-8 takes at most 4 bytes a character), so only longer ones are encoded to measure.
_SURELY_SMALL = MAX_CELL_BYTES // 4


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


@dataclass
class Table:
    """Column names and raw records, before cells become text."""

    path: str
    header: list[object]
    header_line: int | None
    records: list[tuple[int, list[object]]]
    problems: list[ManifestError]


def finish(table: Table) -> tuple[list[str], list[Row]]:
    """Check the columns, convert the cells, drop empty rows; raise what was found."""
    names = [_header_name(h) for h in table.header]
    width = len(names)
    for line, cells in table.records:
        if any(nonblank(c) for c in cells[width:]):
            msg = f"this row has {len(cells)} cells but the header has {width} columns"
            table.problems.append(ManifestError(msg, path=table.path, line=line))
    keep = [i for i, name in enumerate(names) if name or _column_used(table.records, i)]
    _check_names([names[i] for i in keep], keep, table)
    columns = [names[i] for i in keep]
    rows = _rows(table, keep, columns)
    if table.problems:
        raise_all(table.problems)
    return columns, rows


def _header_name(value: object) -> str:
    try:
        return cell_text(value)
    except ValueError:
        return ""


def nonblank(value: object) -> bool:
    """Whether a raw cell holds anything (an unreadable value counts as something)."""
    try:
        return bool(cell_text(value))
    except ValueError:
        return value is not None


def _column_used(records: list[tuple[int, list[object]]], i: int) -> bool:
    return any(nonblank(cells[i]) for _, cells in records if i < len(cells))


def _check_names(names: list[str], positions: list[int], table: Table) -> None:
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


def _rows(table: Table, keep: list[int], columns: list[str]) -> list[Row]:
    rows: list[Row] = []
    for line, cells in table.records:
        values = {
            name: _cell(cells, i, name, line, table) for i, name in zip(keep, columns, strict=True)
        }
        if any(values.values()):
            rows.append(Row(index=len(rows), values=values, line=line))
    return rows


def _cell(cells: list[object], i: int, name: str, line: int, table: Table) -> str:
    if i >= len(cells):
        return ""
    value = cells[i]
    if type(value) is str and len(value) <= _SURELY_SMALL:  # most cells: no checks needed
        return value.strip()
    try:
        text = cell_text(cells[i])
    except (ValueError, UnicodeDecodeError) as exc:
        table.problems.append(ManifestError(str(exc), path=table.path, line=line, column=name))
        return ""
    if len(text) <= _SURELY_SMALL:
        return text
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
    return finish(Table(path, columns, None, records, []))


def too_many_rows(path: str, line: int, limit: int) -> ManifestError:
    """The error for a rows source over ``limit`` rows, at the first row past the limit."""
    return ManifestError(
        f"more than {limit:,} rows: split the file into batches of at most "
        f"{limit:,} rows (one manifest each)",
        path=path,
        line=line,
    )


def capped(
    records: Iterable[tuple[int, list[str]]], path: str, limit: int
) -> Iterator[tuple[int, list[str]]]:
    """Pass records through, raising ``too_many_rows`` past ``limit`` of them."""
    for count, (line, cells) in enumerate(records, start=1):
        if count > limit:
            raise too_many_rows(path, line, limit)
        yield line, cells


def raise_all(problems: list[ManifestError]) -> None:
    raise problems[0] if len(problems) == 1 else ManifestProblems(problems)

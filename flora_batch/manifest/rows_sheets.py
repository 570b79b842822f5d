"""Spreadsheet rows files: XLSX (openpyxl) and Parquet (pyarrow), imported when used.

pyarrow is an extra (``pip install 'flora-batch[parquet]'``, 170 MB): without it a
Parquet rows file is a located error naming the install line, exit 2, nothing spent.

Each reader stops past ``max_rows`` rows (``rows.MAX_ROWS``, passed in by
``rows.load_rows``) and reports bad cells at their spreadsheet position (``B7``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ManifestError
from .cells import Row, Table, finish, nonblank, too_many_rows


@dataclass
class _Sheet:
    """A worksheet's values by (0-based) position, with its formula and error cells."""

    grid: list[list[object]]
    formulas: dict[tuple[int, int], str]
    errors: dict[tuple[int, int], str]


def load_xlsx(path: Path, sheet: str | None, max_rows: int) -> tuple[list[str], list[Row]]:
    book = _xlsx_sheet(path, sheet, max_rows, data_only=False)
    problems = [
        _cell_problem(str(path), rc, f"the cell holds the error value {e}")
        for rc, e in book.errors.items()
    ]
    if book.formulas:
        cached = _xlsx_sheet(path, sheet, max_rows, data_only=True)
        _use_cached(book, cached, str(path), problems)
    numbered = [
        (n, cells) for n, cells in enumerate(book.grid, start=1) if any(nonblank(c) for c in cells)
    ]
    if not numbered:
        raise ManifestError("the worksheet is empty", path=str(path))
    (header_line, header), *records = numbered
    return finish(Table(str(path), header, header_line, records, problems))


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


def _xlsx_sheet(path: Path, sheet: str | None, max_rows: int, *, data_only: bool) -> _Sheet:
    """Read one worksheet; with ``data_only`` formulas give the values Excel saved."""
    import openpyxl

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openpyxl warns about styles and extensions it skips
            book = openpyxl.load_workbook(path, read_only=True, data_only=data_only)
            try:
                return _read_sheet(_worksheet(book, sheet, path), str(path), max_rows)
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


def _read_sheet(ws: Any, path: str, max_rows: int) -> _Sheet:
    ws.reset_dimensions()  # the file's <dimension> may be wrong; never let it hide cells
    out = _Sheet([], {}, {})
    for r, row in enumerate(ws.iter_rows(min_row=1, min_col=1)):
        if r > max_rows:  # row 1 is the header
            raise too_many_rows(path, r + 1, max_rows)
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


#: What to do about a Parquet rows file where pyarrow is not installed.
PARQUET_HINT = (
    "reading Parquet needs pyarrow, which is not installed: "
    "pip install 'flora-batch[parquet]' (or save the rows as CSV or XLSX)"
)


def load_parquet(path: Path, max_rows: int) -> tuple[list[str], list[Row]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ManifestError(PARQUET_HINT, path=str(path)) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and more on bad files
        raise ManifestError(f"cannot read this as a Parquet file: {exc}", path=str(path)) from exc
    columns: list[object] = list(table.column_names)
    if not columns:
        raise ManifestError("the Parquet file has no columns", path=str(path))
    if table.num_rows > max_rows:
        raise too_many_rows(str(path), max_rows + 1, max_rows)
    data = [table.column(i).to_pylist() for i in range(table.num_columns)]
    records = _transpose(data, table.num_rows)
    return finish(Table(str(path), columns, None, records, []))


def _transpose(columns: Iterable[list[object]], count: int) -> list[tuple[int, list[object]]]:
    cells = list(zip(*columns, strict=True)) if count else []
    return [(i + 1, list(row)) for i, row in enumerate(cells)]

"""Rows from a spreadsheet: CSV, XLSX, JSON Lines, Parquet, or a list inside the manifest.

``load_rows`` picks the reader by suffix: ``rows_text`` (CSV, JSON Lines),
``rows_sheets`` (XLSX, Parquet); every reader ends in ``cells.finish``, where the
rules below are applied.

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

from dataclasses import dataclass
from pathlib import Path

from ..errors import ManifestError
from .cells import MAX_CELL_BYTES, Row, cell_text, rows_from_cells
from .rows_sheets import load_parquet, load_xlsx
from .rows_text import decode_text, load_csv, load_jsonl

__all__ = [
    "FORMATS",
    "MAX_CELL_BYTES",
    "MAX_FILE_BYTES",
    "MAX_ROWS",
    "Row",
    "RowsSource",
    "cell_text",
    "decode_text",
    "load_rows",
    "rows_from_cells",
]

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
        return load_xlsx(path, source.sheet, MAX_ROWS)
    if kind == "parquet":
        return load_parquet(path, MAX_ROWS)
    text = decode_text(data, str(path), source.encoding)
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ManifestError(
            "contains a NUL character: is this a text file?", path=str(path), line=line
        )
    if kind == "jsonl":
        return load_jsonl(text, str(path), MAX_ROWS)
    return load_csv(text, str(path), MAX_ROWS)


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

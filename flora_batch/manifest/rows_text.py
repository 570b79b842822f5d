"""Text rows files: decoding (UTF-8 or a declared encoding), CSV and JSON Lines.

Both readers keep the line each record starts on, for messages, and stop at the first
record past ``max_rows`` (``rows.MAX_ROWS``, passed in by ``rows.load_rows``).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from typing import Any

from ..errors import ManifestError
from .cells import MAX_CELL_BYTES, Row, Table, capped, finish, too_many_rows

_SNIFF_BYTES = 8192
_SNIFF_CHARS = 1 << 20  # the header line is looked for in the first MiB
_STRINGIO_CHARS = 8 << 20  # up to this many characters, StringIO splits the lines
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


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


# --- CSV -------------------------------------------------------------------------------


def _sniff_delimiter(text: str) -> str:
    """The delimiter of the header line: comma unless tabs or semicolons clearly win."""
    first = next((line for line in text[:_SNIFF_CHARS].splitlines() if line.strip()), "")
    counts = {d: first.count(d) for d in (",", "\t", ";")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


def _lines(text: str) -> Iterator[str]:
    """The lines ``io.StringIO(text, newline="")`` yields (``\r``, ``\n`` and ``\r\n`` end one).

    A small text is read through StringIO itself (C speed: the regex below took a third
    of reading 100,000 rows); a big one through the regex, without StringIO's copy of
    the whole text at 4 bytes a character.
    """
    if len(text) <= _STRINGIO_CHARS:
        return iter(io.StringIO(text, newline=""))
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


def load_csv(text: str, path: str, max_rows: int) -> tuple[list[str], list[Row]]:
    records = _csv_records(text, path)
    first = next(records, None)
    if first is None:
        raise ManifestError("the rows file is empty", path=path)
    line, header = first
    rest: list[tuple[int, list[object]]] = [
        (n, list(cells)) for n, cells in capped(records, path, max_rows)
    ]
    return finish(Table(path, list(header), line, rest, []))


# --- JSON Lines ------------------------------------------------------------------------


def load_jsonl(text: str, path: str, max_rows: int) -> tuple[list[str], list[Row]]:
    problems: list[ManifestError] = []
    objects: list[tuple[int, dict[str, object]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            obj = _json_object(line, path, number, problems)
            if obj is not None:
                objects.append((number, obj))
            if len(objects) > max_rows:
                raise too_many_rows(path, number, max_rows)
    columns = list(dict.fromkeys(key for _, obj in objects for key in obj))
    records: list[tuple[int, list[object]]] = [
        (n, [obj.get(c) for c in columns]) for n, obj in objects
    ]
    if not columns and not problems:
        raise ManifestError("the rows file has no columns", path=path)
    return finish(Table(path, list(columns), None, records, problems))


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

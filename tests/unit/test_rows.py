"""load_rows: four file formats, one result; every file problem located."""

from __future__ import annotations

import codecs
import io
import json
import zipfile
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import openpyxl
import pandas as pd
import pytest
from unit_support import located, problems_of

from flora_batch.errors import ManifestError
from flora_batch.manifest.rows import (
    MAX_CELL_BYTES,
    Row,
    RowsSource,
    cell_text,
    load_rows,
    rows_from_cells,
)

Write = Callable[[str, str | bytes], Path]

FRAME = pd.DataFrame(
    {
        "sku": ["00123", "B-2", "C 3"],
        "title": ["Mug, speckled", "Lamp \u201carc\u201d", "Caf\u00e9 tote"],
        "image_url": [
            "https://media.flora.ai/a.png",
            "https://media.flora.ai/b.png",
            "https://media.flora.ai/c.png",
        ],
        "note": ["", "multi\nline", "x"],
    }
)
EXPECTED = [
    {
        "sku": "00123",
        "title": "Mug, speckled",
        "image_url": "https://media.flora.ai/a.png",
        "note": "",
    },
    {
        "sku": "B-2",
        "title": "Lamp \u201carc\u201d",
        "image_url": "https://media.flora.ai/b.png",
        "note": "multi\nline",
    },
    {
        "sku": "C 3",
        "title": "Caf\u00e9 tote",
        "image_url": "https://media.flora.ai/c.png",
        "note": "x",
    },
]


def _errors(path: Path, root: Path, **kwargs: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_rows(RowsSource(path=path, **kwargs))  # type: ignore[arg-type]
    return located(problems_of(info.value), root)


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".jsonl", ".parquet"])
def test_four_formats_load_the_same_rows(tmp_path: Path, suffix: str) -> None:
    """CSV, XLSX, JSONL and Parquet written by pandas give identical columns and values."""
    path = tmp_path / f"rows{suffix}"
    if suffix == ".csv":
        FRAME.to_csv(path, index=False)
    elif suffix == ".xlsx":
        FRAME.to_excel(path, index=False)
    elif suffix == ".jsonl":
        FRAME.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        FRAME.to_parquet(path, index=False)
    columns, rows = load_rows(path)
    assert columns == ["sku", "title", "image_url", "note"]
    assert [r.values for r in rows] == EXPECTED
    assert [r.index for r in rows] == [0, 1, 2]


def test_line_numbers_per_format(tmp_path: Path) -> None:
    """CSV lines count physical lines, XLSX counts sheet rows, JSONL lines, Parquet records."""
    FRAME.to_csv(tmp_path / "r.csv", index=False)
    FRAME.to_excel(tmp_path / "r.xlsx", index=False)
    FRAME.to_json(tmp_path / "r.jsonl", orient="records", lines=True)
    FRAME.to_parquet(tmp_path / "r.parquet", index=False)
    lines = {
        s: [r.line for r in load_rows(tmp_path / f"r.{s}")[1]]
        for s in ("csv", "xlsx", "jsonl", "parquet")
    }
    assert lines == {"csv": [2, 3, 5], "xlsx": [2, 3, 4], "jsonl": [1, 2, 3], "parquet": [1, 2, 3]}


def test_csv_blank_and_empty_rows_are_skipped(write: Write) -> None:
    """Blank lines and all-empty rows are skipped; index counts kept rows, lines stay true."""
    path = write("r.csv", "\n\na,b\n1,2\n\n,\n 3 , \n")
    columns, rows = load_rows(path)
    assert columns == ["a", "b"]
    assert rows == [Row(0, {"a": "1", "b": "2"}, 4), Row(1, {"a": "3", "b": ""}, 7)]


def test_csv_delimiters_are_sniffed(write: Write) -> None:
    """Semicolon (European Excel) and tab separated files are read by their header."""
    assert load_rows(write("a.csv", "x;y\n1,5;2\n"))[1][0].values == {"x": "1,5", "y": "2"}
    assert load_rows(write("b.tsv", "x\ty\n1\t2\n"))[1][0].values == {"x": "1", "y": "2"}


def test_bom_and_utf16_are_read(write: Write) -> None:
    """A UTF-8 BOM is dropped; UTF-16 with a BOM (Excel 'Unicode Text') is decoded."""
    assert load_rows(write("a.csv", codecs.BOM_UTF8 + "sku,t\n1,é\n".encode()))[0] == ["sku", "t"]
    columns, rows = load_rows(write("b.csv", "sku\tt\n1\té\n".encode("utf-16")))
    assert columns == ["sku", "t"]
    assert rows[0].values == {"sku": "1", "t": "é"}


def test_cp1252_is_refused_with_a_note(tmp_path: Path, write: Write) -> None:
    """Non-UTF-8 bytes are located and the likely encoding is named."""
    path = write("r.csv", "sku,title\n1,Caf\u00e9 \u2013 latte\n".encode("cp1252"))
    [error] = _errors(path, tmp_path)
    assert error.startswith("r.csv:2:6: is not UTF-8 (byte 0xe9); it is probably Windows-1252")
    assert "encoding: cp1252" in error


def test_declared_encoding_reads_the_file(write: Write) -> None:
    """encoding: cp1252 on the rows entry decodes the file."""
    path = write("r.csv", "sku,title\n1,Caf\u00e9 \u2013 latte\n".encode("cp1252"))
    rows = load_rows(RowsSource(path=path, encoding="cp1252"))[1]
    assert rows[0].values["title"] == "Caf\u00e9 \u2013 latte"


def test_declared_encoding_problems(tmp_path: Path, write: Write) -> None:
    """An unknown encoding name, or bytes invalid in the declared one, are reported."""
    path = write("r.csv", b"a\n\x81\n")
    assert _errors(path, tmp_path, encoding="klingon") == ["r.csv: unknown encoding 'klingon'"]
    assert _errors(path, tmp_path, encoding="cp1252") == [
        "r.csv:2:1: is not valid cp1252 (byte 0x81)"
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "r.csv: the rows file is empty"),
        (b" \n\n", "r.csv: the rows file is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "r.csv: is not a text file (it contains binary data)"),
        (b"PK\x03\x04rest", "r.csv: is a zip file (an Excel workbook?), not text: name it .xlsx"),
        (b"PAR1rest", "r.csv: is a Parquet file, not text: name it .parquet"),
        (b",\n\n", "r.csv: the rows file is empty"),
    ],
)
def test_unusable_csv_files(tmp_path: Path, write: Write, content: bytes, expected: str) -> None:
    """Empty, binary and misnamed files are refused with a plain message."""
    assert _errors(write("r.csv", content), tmp_path) == [expected]


def test_missing_file_folder_and_unknown_suffix(tmp_path: Path) -> None:
    """A missing file, a folder and an unknown suffix are reported at the path."""
    assert _errors(tmp_path / "gone.csv", tmp_path) == ["gone.csv: rows file not found"]
    (tmp_path / "dir.csv").mkdir()
    assert _errors(tmp_path / "dir.csv", tmp_path) == ["dir.csv: is a folder, not a rows file"]
    [error] = _errors(tmp_path / "x.xls", tmp_path)
    assert error.startswith("x.xls: cannot read .xls: use one of .csv")


def test_column_name_problems(tmp_path: Path, write: Write) -> None:
    """Blank and repeated column names are errors; an unnamed empty column is ignored."""
    path = write("r.csv", "sku,,title,sku,\n1,x,t,2,\n")
    assert _errors(path, tmp_path) == [
        "r.csv:1:2: column 2 has values but no name",
        "r.csv:1:4: column 4 repeats the name 'sku' of column 1",
    ]
    assert load_rows(write("ok.csv", "sku,,title\n1,,t\n"))[0] == ["sku", "title"]


def test_ragged_rows(tmp_path: Path, write: Write) -> None:
    """Missing cells are empty; extra non-empty cells are an error at their line."""
    assert load_rows(write("short.csv", "a,b,c\n1\n"))[1][0].values == {"a": "1", "b": "", "c": ""}
    assert load_rows(write("comma.csv", "a,b\n1,2,\n"))[1][0].values == {"a": "1", "b": "2"}
    assert _errors(write("long.csv", "a,b\n1,2\n1,2,3\n"), tmp_path) == [
        "long.csv:3: this row has 3 cells but the header has 2 columns"
    ]


def test_huge_cells(tmp_path: Path, write: Write) -> None:
    """A cell over the limit is an error at its row and column, however the parser sees it."""
    big = "x" * (MAX_CELL_BYTES + 1)
    assert _errors(write("a.csv", f"a,b\n1,{big}\n"), tmp_path) == [
        f"a.csv:2:b: cell is {MAX_CELL_BYTES + 1:,} bytes; the limit is {MAX_CELL_BYTES:,}"
    ]
    [error] = _errors(write("b.csv", "a,b\n1," + "x" * 200_000 + "\n"), tmp_path)
    assert error.startswith("b.csv:2: cannot parse this CSV line: a cell is over the 100,000-byte")


def test_nul_past_the_sniffed_head_is_located(tmp_path: Path, write: Write) -> None:
    """A NUL character anywhere in a text file is refused at its line."""
    content = b"a,b\n" + b"1,2\n" * 3000 + b"3,\x004\n"
    assert _errors(write("r.csv", content), tmp_path) == [
        "r.csv:3002: contains a NUL character: is this a text file?"
    ]


def _xlsx_with_formula(path: Path, b2: str | None) -> None:
    """A workbook whose B2 holds =A2*2 with no saved value, or the raw XML ``b2`` instead."""
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["a", "b"])
    sheet.append([2, "=A2*2"])
    buffer = io.BytesIO()
    book.save(buffer)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "xl/worksheets/sheet1.xml" and b2 is not None:
                data = data.replace(b'<c r="B2"><f>A2*2</f><v /></c>', b2.encode())
            dst.writestr(item, data)


def test_xlsx_formula_gives_its_saved_value(tmp_path: Path) -> None:
    """A formula cell reads as the value Excel saved with it."""
    path = tmp_path / "f.xlsx"
    _xlsx_with_formula(path, '<c r="B2"><f>A2*2</f><v>4</v></c>')
    assert load_rows(path)[1][0].values == {"a": "2", "b": "4"}


def test_xlsx_formula_without_saved_value_is_an_error(tmp_path: Path) -> None:
    """A formula never calculated (written by a script) is reported at its cell."""
    path = tmp_path / "f.xlsx"
    _xlsx_with_formula(path, None)
    assert _errors(path, tmp_path) == [
        "f.xlsx:2:B: formula =A2*2 has no saved value: open and save the file in Excel "
        "or LibreOffice, or paste values"
    ]


def test_xlsx_error_values_are_errors(tmp_path: Path) -> None:
    """Error values (#N/A, #REF!) are reported at their cell, also past the sheet's dimension."""
    path = tmp_path / "f.xlsx"
    b2 = '<c r="B2" t="e"><f>A2*2</f><v>#N/A</v></c><c r="C2" t="e"><v>#REF!</v></c>'
    _xlsx_with_formula(path, b2)
    assert _errors(path, tmp_path) == [
        "f.xlsx:2:C: the cell holds the error value #REF!",
        "f.xlsx:2:B: formula =A2*2 gives the error #N/A",
        "f.xlsx:2: this row has 3 cells but the header has 2 columns",
    ]


def test_xlsx_sheets_and_layout(tmp_path: Path) -> None:
    """sheet: picks a worksheet; leading blank rows are skipped; values become text."""
    book = openpyxl.Workbook()
    first = book.active
    assert first is not None
    first.title = "Notes"
    first.append(["ignore me"])
    sheet = book.create_sheet("Products")
    sheet["B3"], sheet["C3"] = "sku", "when"
    sheet["B4"], sheet["C4"] = 12.0, datetime(2024, 5, 1)
    sheet["B5"], sheet["C5"] = True, datetime(2024, 5, 1, 9, 30)
    path = tmp_path / "w.xlsx"
    book.save(path)
    columns, rows = load_rows(RowsSource(path=path, sheet="Products"))
    assert columns == ["sku", "when"]
    assert [(r.line, r.values) for r in rows] == [
        (4, {"sku": "12", "when": "2024-05-01"}),
        (5, {"sku": "true", "when": "2024-05-01T09:30:00"}),
    ]
    assert load_rows(path)[0] == ["ignore me"]
    assert _errors(path, tmp_path, sheet="Nope") == [
        "w.xlsx: no sheet named 'Nope'; the sheets are Notes, Products"
    ]


def test_broken_xlsx_and_parquet(tmp_path: Path, write: Write) -> None:
    """A damaged workbook or Parquet file is a ManifestError, whatever the library raised."""
    [xlsx] = _errors(write("bad.xlsx", b"not a zip"), tmp_path)
    assert xlsx.startswith("bad.xlsx: cannot read this as an Excel workbook")
    [parquet] = _errors(write("bad.parquet", b"PAR1 not really"), tmp_path)
    assert parquet.startswith("bad.parquet: cannot read this as a Parquet file")


def test_jsonl_problems(tmp_path: Path, write: Write) -> None:
    """Bad JSON, non-objects, nested values and repeated keys are located by line."""
    content = '{"a": "1"}\n{"a": \n[1, 2]\n{"a": {"b": 1}}\n{"a": 1, " a": 2}\n'
    assert _errors(write("r.jsonl", content), tmp_path) == [
        "r.jsonl:2:7: not valid JSON: Expecting value",
        "r.jsonl:3: each line must be a JSON object ({...})",
        "r.jsonl:5: key 'a' appears twice in this object",
        "r.jsonl:4:a: a dict is not a cell value: use text or a number",
    ]


def test_jsonl_columns_are_the_union_of_keys(write: Write) -> None:
    """Keys missing from a line are empty cells; numbers and booleans become text."""
    path = write("r.jsonl", '{"a": 1, "b": true}\n\n{"c": null, "a": 2.5}\n')
    columns, rows = load_rows(path)
    assert columns == ["a", "b", "c"]
    assert [(r.line, r.values) for r in rows] == [
        (1, {"a": "1", "b": "true", "c": ""}),
        (3, {"a": "2.5", "b": "", "c": ""}),
    ]


def test_parquet_types_become_text(tmp_path: Path) -> None:
    """Parquet nulls, ints, floats and dates become the same text as elsewhere."""
    frame = pd.DataFrame({"n": [1, 2], "f": [1.0, None], "d": [date(2024, 1, 2), None]})
    frame.to_parquet(tmp_path / "p.parquet", index=False)
    rows = load_rows(tmp_path / "p.parquet")[1]
    assert [r.values for r in rows] == [
        {"n": "1", "f": "1", "d": "2024-01-02"},
        {"n": "2", "f": "", "d": ""},
    ]


def test_inline_source_returns_its_rows() -> None:
    """An inline RowsSource gives back its parsed rows without reading anything."""
    row = Row(0, {"a": "1"}, 7)
    assert load_rows(RowsSource(inline=(row,), columns=("a",))) == (["a"], [row])


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        ("  x  ", "x"),
        (True, "true"),
        (False, "false"),
        (7, "7"),
        (5.0, "5"),
        (2.5, "2.5"),
        (0.1, "0.1"),
        (1e20, "1e+20"),
        (float("nan"), ""),
        (Decimal("1.50"), "1.50"),
        (datetime(2024, 5, 1), "2024-05-01"),
        (datetime(2024, 5, 1, 8, 0, 1), "2024-05-01T08:00:01"),
        (date(2024, 5, 1), "2024-05-01"),
        (time(8, 30), "08:30:00"),
        (b" bytes ", "bytes"),
    ],
)
def test_cell_text(value: object, text: str) -> None:
    """Every cell type has one text spelling."""
    assert cell_text(value) == text


@pytest.mark.parametrize("value", [[1], {"a": 1}, b"\xff", object()])
def test_cell_text_refuses_non_scalars(value: object) -> None:
    """Lists, objects and undecodable bytes are not cells."""
    with pytest.raises(ValueError):
        cell_text(value)


def test_json_round_trip_of_expected() -> None:
    """The fixture rows are plain JSON-able strings (sanity check of the test data)."""
    assert json.loads(json.dumps(EXPECTED)) == EXPECTED


def test_timedelta_cell() -> None:
    """A duration (Parquet) reads as H:MM:SS."""
    assert cell_text(timedelta(minutes=90)) == "1:30:00"


def test_rows_from_cells_odd_headers() -> None:
    """A header cell that is not text has no name; an unnamed column with a list is used."""
    with pytest.raises(ManifestError) as info:
        rows_from_cells("x.csv", [["a"], "b"], [(2, [[1], "y"])])
    assert located(problems_of(info.value), Path()) == [
        "x.csv: column 1 has values but no name",
        "x.csv:2: a list is not a cell value: use text or a number",
    ]


def test_empty_worksheet_and_columnless_parquet(tmp_path: Path) -> None:
    """A workbook without values and a Parquet file without columns are refused."""
    openpyxl.Workbook().save(tmp_path / "e.xlsx")
    assert _errors(tmp_path / "e.xlsx", tmp_path) == ["e.xlsx: the worksheet is empty"]
    pd.DataFrame().to_parquet(tmp_path / "e.parquet")
    assert _errors(tmp_path / "e.parquet", tmp_path) == [
        "e.parquet: the Parquet file has no columns"
    ]


def test_unreadable_path_and_inline_format(tmp_path: Path) -> None:
    """An OS error other than "not found" is reported with its reason; inline has a format."""
    [error] = _errors(tmp_path / ("x" * 300 + ".csv"), tmp_path)
    assert error.endswith(": cannot read the rows file: File name too long")
    assert RowsSource().format == "inline"

"""Fuzzing the inputs tests/unit/test_fuzz.py leaves out: misspelt keys must get a
"did you mean", and spreadsheets with duplicate or blank column names, formulas, huge
cells, odd encodings and workbook junk end in rows or a located ManifestError, never in
another exception.  (A million rows: test_sec_manifests.py.)
"""

from __future__ import annotations

import codecs
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from openpyxl import Workbook

from flora_batch.errors import ManifestError, ManifestProblems
from flora_batch.manifest import TOP_KEYS, build_jobs, check_manifest, load_manifest
from flora_batch.manifest.rows import MAX_CELL_BYTES, RowsSource, load_rows
from flora_batch.types import IOSlot, Technique

FUZZ = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
CATALOG = {
    "studio-shot": Technique(
        slug="studio-shot",
        technique_id="tech_studio-shot",
        name="studio-shot",
        run_cost=0.06,
        inputs=(IOSlot("product", "imageUrl"), IOSlot("backdrop", "text", optional=True)),
        outputs=(IOSlot("shot", "imageUrl"),),
    )
}
GOOD = {
    "name": "b",
    "technique": "studio-shot",
    "rows": "p.csv",
    "inputs": {"product": "{image_url}", "backdrop": "{title}"},
    "output": {"dir": "out", "name": "{row}-{output_id}{ext}"},
}
LETTERS = string.ascii_lowercase + "_"


def one_edit_apart(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with one deletion, insertion, substitution or adjacent swap."""
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        swap = len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
        return len(diff) == 1 or (swap and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    return len(long) - len(short) == 1 and any(
        long[:i] + long[i + 1 :] == short for i in range(len(long))
    )


@st.composite
def typos(draw: st.DrawFn) -> tuple[str, str]:
    """A top-level key of 4+ letters, and that key with one typing mistake."""
    key = draw(st.sampled_from([k for k in TOP_KEYS if len(k) >= 4]))
    at = draw(st.integers(0, len(key) - 1))
    letter = draw(st.sampled_from(LETTERS))
    kind = draw(st.sampled_from(["drop", "swap", "replace", "insert"]))
    typo = {
        "drop": key[:at] + key[at + 1 :],
        "swap": key[:at] + key[at + 1 : at + 2] + key[at] + key[at + 2 :],
        "replace": key[:at] + letter + key[at + 1 :],
        "insert": key[:at] + letter + key[at:],
    }[kind]
    assume(typo not in TOP_KEYS)
    return key, typo


@settings(FUZZ, max_examples=100)
@given(typo=typos(), value=st.sampled_from(["3", "x", "[1]", "{a: 1}", "''"]))
def test_misspelt_key_gets_a_did_you_mean(
    tmp_path: Path, typo: tuple[str, str], value: str
) -> None:
    """A misspelt top-level key is named at its line with a key one edit away suggested."""
    key, wrong = typo
    data = {k: v for k, v in GOOD.items() if k != key}
    text = yaml.safe_dump(data, sort_keys=False) + f"{wrong}: {value}\n"
    (tmp_path / "p.csv").write_text("sku,title,image_url\nA,b,https://media.flora.ai/a.jpg\n")
    with pytest.raises(ManifestProblems) as info:
        load_manifest(tmp_path / "m.yaml", text)
    [problem] = [p for p in info.value.problems if f"unknown key {wrong!r}" in p.message]
    assert problem.line == text.count("\n")
    suggested = problem.message.split("did you mean ")[1].strip("'?")
    assert one_edit_apart(suggested, wrong) or suggested == wrong


HEADERS = st.lists(
    st.sampled_from(["sku", "title", "image_url", "", " ", "sku ", "SKU", "a\nb", "=1+1", "é"]),
    min_size=1,
    max_size=6,
)
CELLS = st.sampled_from(
    [
        "https://media.flora.ai/a.jpg",
        '=HYPERLINK("http://evil","x")',
        "+cmd|' /C calc'!A0",
        "@SUM(1)",
        "-1",
        "\t=1",
        "x" * (MAX_CELL_BYTES + 1),
        "\u202eevil",
        "",
    ]
) | st.text(max_size=30)
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252", "latin-1", "shift_jis"])


def expect_rows_or_located_error(path: Path, source: RowsSource | None = None) -> None:
    """Load rows and build jobs: anything but a ManifestError about ``path`` fails."""
    try:
        columns, rows = load_rows(source or RowsSource(path=path))
        m = load_manifest(path.parent / "m.yaml", yaml.safe_dump({**GOOD, "rows": path.name}))
        build_jobs(m, columns, rows, CATALOG)
    except ManifestProblems as exc:
        assert all(p.path for p in exc.problems)
    except ManifestError as exc:
        assert exc.path == str(path) or exc.path.endswith("m.yaml"), exc


@settings(FUZZ, max_examples=150)
@given(
    header=HEADERS,
    body=st.lists(st.lists(CELLS, max_size=7), max_size=5),
    enc=ENCODINGS,
    declare=st.booleans(),
)
def test_csv_with_odd_columns_cells_and_encodings(
    tmp_path: Path, header: list[str], body: list[list[str]], enc: str, declare: bool
) -> None:
    """Duplicate/blank names, formulas, huge cells, odd encodings: rows or a located error."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(body)
    path = tmp_path / "p.csv"
    path.write_bytes(buf.getvalue().encode(enc, errors="replace"))
    expect_rows_or_located_error(path, RowsSource(path=path, encoding=enc if declare else None))


@settings(FUZZ, max_examples=40)
@given(
    header=HEADERS,
    body=st.lists(
        st.lists(CELLS | st.integers() | st.floats(allow_nan=True) | st.none(), max_size=5),
        max_size=4,
    ),
)
def test_workbooks_with_formulas_and_junk(
    tmp_path: Path, header: list[str], body: list[list[object]]
) -> None:
    """XLSX sheets with formulas (never computed: no cached value), odd names and huge cells."""
    from openpyxl.utils.exceptions import IllegalCharacterError

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    try:
        sheet.append(header)
        for row in body:
            sheet.append(row)
    except IllegalCharacterError:  # openpyxl cannot write control characters: not our input
        return
    path = tmp_path / "p.xlsx"
    book.save(path)
    expect_rows_or_located_error(path)


@settings(FUZZ, max_examples=60)
@given(
    column=st.text(min_size=1, max_size=12).filter(
        lambda c: c.strip() and "{" not in c and "}" not in c
    )
)
def test_template_naming_a_missing_column_is_located(tmp_path: Path, column: str) -> None:
    """An input template naming a column the rows lack: a problem naming it, at its line."""
    assume(column.strip() not in ("sku", "title", "image_url"))
    assume(all(ch not in column for ch in ":!\n\r\x85\u2028\u2029"))
    data = {**GOOD, "inputs": {"product": "{" + column + "}"}}
    (tmp_path / "p.csv").write_text("sku,title,image_url\nA,b,https://media.flora.ai/a.jpg\n")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        m = load_manifest(tmp_path / "m.yaml")
    except ManifestProblems as exc:  # not even a valid placeholder ("{[}"): located too
        assert all(p.line for p in exc.problems) and "template" in str(exc)
        return
    columns, _ = load_rows(m.rows, m.path)
    problems = check_manifest(m, columns, CATALOG)
    assert any("unknown column" in p.message and p.line for p in problems), problems


@pytest.mark.parametrize(
    "prefix", [codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE]
)
def test_byte_order_marks(tmp_path: Path, prefix: bytes) -> None:
    """UTF-8 and UTF-16 BOMs are read; a UTF-32 BOM is refused as binary with its path."""
    text = "sku,title,image_url\nA,b,https://media.flora.ai/a.jpg\n"
    codec = {
        codecs.BOM_UTF8: "utf-8",
        codecs.BOM_UTF16_LE: "utf-16-le",
        codecs.BOM_UTF16_BE: "utf-16-be",
        codecs.BOM_UTF32_LE: "utf-32-le",
    }[prefix]
    path = tmp_path / "p.csv"
    path.write_bytes(prefix + text.encode(codec))
    if prefix == codecs.BOM_UTF32_LE:
        with pytest.raises(ManifestError) as info:
            load_rows(path)
        assert info.value.path == str(path)
        return
    columns, rows = load_rows(path)
    assert columns == ["sku", "title", "image_url"] and rows[0].values["sku"] == "A"

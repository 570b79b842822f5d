"""Hostile manifests and spreadsheets through the real CLI: exit 2, every problem located
as ``file:line[:column]: message`` on stderr, never a traceback, never a paid request.

Problems about a whole file (empty, binary, not a workbook, nested too deeply) have no
line to point at and are located as ``file: message``.  One emulator per test module
(per xdist worker) serves every case; its create count must stay 0.
"""

from __future__ import annotations

import codecs
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from security_helpers import (
    FAST,
    LOCATED,
    MANIFEST,
    assert_no_traceback,
    cli_env,
    creates,
    run_cli,
)

from flora_batch.emulator import EmulatorConfig
from flora_batch.emulator.serve import start_server
from flora_batch.errors import ManifestError
from flora_batch.manifest.rows import MAX_ROWS, load_rows

CSV = "sku,title,image_url\nA1,Mug,https://media.flora.ai/a.jpg\n"
GOOD = MANIFEST.format(rows="p.csv", name="{sku}/{output_id}{ext}")
BOMB = "".join(
    f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]\n" if p else f"{k}: &{k} [lol, lol, lol]\n"
    for p, k in zip(["", "a", "b", "c", "d", "e", "f"], "abcdefg", strict=True)
)


def manifest_with(**changes: str) -> str:
    """GOOD with whole lines replaced (``line3="..."`` replaces line 3) or text appended."""
    lines = GOOD.splitlines()
    for key, value in changes.items():
        if key.startswith("line"):
            lines[int(key[4:]) - 1] = value
    return "\n".join(lines) + "\n" + changes.get("tail", "")


#: name -> (manifest text or bytes, rows file name, rows bytes or None, expected location,
#: a phrase the message must contain).  A location is (file, line) or (file, None).
CASES: dict[str, tuple[str | bytes, str, bytes | None, tuple[str, int | None], str]] = {
    "broken_yaml": (manifest_with(line5="inputs: [oops"), "p.csv", None, ("b.yaml", 6), "YAML"),
    "tab_indent": (manifest_with(line6="\tproduct: x"), "p.csv", None, ("b.yaml", 6), "YAML"),
    "misspelt_key": (GOOD + "concurency: 3\n", "p.csv", None, ("b.yaml", 10), "did you mean"),
    "wrong_type": (GOOD + "max_cost: lots\n", "p.csv", None, ("b.yaml", 10), "max_cost"),
    "negative": (GOOD + "concurrency: -3\n", "p.csv", None, ("b.yaml", 10), "concurrency"),
    "duplicate_key": (GOOD + "name: other\n", "p.csv", None, ("b.yaml", 10), "twice"),
    "missing_rows": (
        manifest_with(line3="rows: gone.csv"),
        "x.csv",
        None,
        ("b.yaml", 3),
        "not found",
    ),
    "empty_manifest": ("", "p.csv", None, ("b.yaml", 1), "empty"),
    "list_manifest": ("- a\n- b\n", "p.csv", None, ("b.yaml", 1), "mapping"),
    "binary_manifest": (b"\x00\x01\xfe\xffjunk", "p.csv", None, ("b.yaml", 1), "UTF-8"),
    "utf16_manifest": (
        codecs.BOM_UTF16_LE + GOOD.encode("utf-16-le"),
        "p.csv",
        None,
        ("b.yaml", 1),
        "UTF-8",
    ),
    "alias_bomb": (GOOD + BOMB, "p.csv", None, ("b.yaml", 10), "unknown key"),
    "python_tag": (
        manifest_with(line1="name: !!python/object/apply:os.system [touch PWNED]"),
        "p.csv",
        None,
        ("b.yaml", 1),
        "name",
    ),
    "deep_nesting": (
        GOOD + "x: " + "[" * 5000 + "]" * 5000 + "\n",
        "p.csv",
        None,
        ("b.yaml", None),
        "nested too deeply",
    ),
    "missing_column": (
        manifest_with(line6='  product: "{picture}"'),
        "p.csv",
        None,
        ("b.yaml", 6),
        "unknown column 'picture'",
    ),
    "bad_template": (
        manifest_with(line9='  name: "{sku!r}"'),
        "p.csv",
        None,
        ("b.yaml", 9),
        "conversions",
    ),
    "unknown_technique": (
        manifest_with(line2="technique: studio-shto"),
        "p.csv",
        None,
        ("b.yaml", 2),
        "no technique",
    ),
    "empty_rows": (GOOD, "p.csv", b"", ("p.csv", None), "empty"),
    "binary_rows": (GOOD, "p.csv", bytes(range(256)) * 4, ("p.csv", None), "binary"),
    "latin1_rows": (
        GOOD,
        "p.csv",
        "sku,title,image_url\nA1,Caf\xe9,x\n".encode("latin-1"),
        ("p.csv", 2),
        "not UTF-8",
    ),
    "nul_late": (GOOD, "p.csv", (CSV + "B2,x" * 3000 + "\x00,y\n").encode(), ("p.csv", 3), "NUL"),
    "duplicate_columns": (GOOD, "p.csv", b"sku,sku,image_url\nA1,B,x\n", ("p.csv", 1), "repeats"),
    "blank_column": (GOOD, "p.csv", b"sku,,image_url\nA1,B,x\n", ("p.csv", 1), "no name"),
    "huge_cell": (
        GOOD,
        "p.csv",
        f"sku,title,image_url\nA1,{'x' * 200_000},y\n".encode(),
        ("p.csv", 2),
        "100,000-byte",
    ),
    "formula_url": (
        GOOD,
        "p.csv",
        b'sku,title,image_url\nA1,Mug,"=HYPERLINK(""http://x"")"\n',
        ("p.csv", 2),
        "input 'product'",
    ),
    "file_url": (
        GOOD,
        "p.csv",
        b"sku,title,image_url\nA1,Mug,file:///etc/passwd\n",
        ("p.csv", 2),
        "input 'product'",
    ),
    "not_a_workbook": (
        manifest_with(line3="rows: p.xlsx"),
        "p.xlsx",
        b"PK\x03\x04 not a zip",
        ("p.xlsx", None),
        "Excel workbook",
    ),
    "bad_jsonl": (
        manifest_with(line3="rows: p.jsonl"),
        "p.jsonl",
        b'{"sku": "A1", "image_url": "https://media.flora.ai/a.jpg"}\n{"sku": \n',
        ("p.jsonl", 2),
        "JSON",
    ),
}


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    """One emulator for every case of this module (per xdist worker)."""
    handle = start_server(EmulatorConfig(speed=2000.0), host="127.0.0.1", port=0)
    yield handle
    handle.stop()


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_manifest_is_refused_with_a_location(
    server: Any, tmp_path: Path, case: str
) -> None:
    """Each hostile manifest or rows file: exit 2, a located message, no traceback, no create."""
    text, rows_name, rows, (where, line), phrase = CASES[case]
    manifest = tmp_path / "b.yaml"
    if isinstance(text, str):  # python_tag would touch this very file if it ever ran
        text = text.replace("PWNED", str(tmp_path / "PWNED")).encode("utf-8")
    manifest.write_bytes(text)
    (tmp_path / rows_name).write_bytes(CSV.encode() if rows is None else rows)
    res = run_cli("run", str(manifest), *FAST, env=cli_env(server, home=tmp_path))
    assert res.code == 2, res.text
    assert_no_traceback(res)
    located = [m for m in map(LOCATED.match, res.err.splitlines()) if m]
    if line is None:
        assert res.err.startswith(f"{tmp_path / where}: "), res.err
    else:
        assert any(
            m["file"] == str(tmp_path / where) and int(m["line"]) == line for m in located
        ), res.err
    assert phrase in res.err, res.err
    assert res.err.rstrip().endswith("nothing was submitted."), res.err
    assert creates(server) == 0
    assert not (tmp_path / "PWNED").exists()


# --- a million rows ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def million(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1,000,000-row CSV (about 55 MB) and a manifest over it."""
    folder = tmp_path_factory.mktemp("million")
    body = "".join(f"S{i},Mug {i},https://media.flora.ai/p/{i}.jpg\n" for i in range(1_000_000))
    (folder / "p.csv").write_text("sku,title,image_url\n" + body, encoding="utf-8")
    manifest = folder / "b.yaml"
    manifest.write_text(GOOD, encoding="utf-8")
    return manifest


def test_a_million_rows_are_refused_in_bounded_memory(million: Path) -> None:
    """Reading a 1M-row CSV stops at MAX_ROWS, at the first row past it, in under 300 MB."""
    tracemalloc.start()
    try:
        with pytest.raises(ManifestError) as info:
            load_rows(million.parent / "p.csv")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.line == MAX_ROWS + 2  # the header is line 1
    assert f"more than {MAX_ROWS:,} rows" in info.value.message
    assert peak < 300 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"


def test_a_million_rows_through_the_cli(server: Any, million: Path) -> None:
    """`run` on a 1M-row CSV: exit 2 at p.csv:100002 with a way out, nothing bought."""
    res = run_cli("run", str(million), *FAST, env=cli_env(server, home=million.parent))
    assert res.code == 2, res.text
    assert_no_traceback(res)
    assert res.err.startswith(f"{million.parent / 'p.csv'}:{MAX_ROWS + 2}: more than"), res.err
    assert "split the file into batches" in res.err
    assert creates(server) == 0


def test_rows_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    """A rows file over MAX_FILE_BYTES is refused from its size alone (a sparse file here)."""
    from flora_batch.manifest.rows import MAX_FILE_BYTES

    path = tmp_path / "p.csv"
    with path.open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ManifestError, match="the limit is"):
        load_rows(path)
    assert os.stat(path).st_blocks == 0  # never read into memory nor written


@pytest.mark.parametrize(
    "make",
    ["xlsx", "jsonl", "parquet"],
)
def test_row_limit_holds_for_every_format(
    tmp_path: Path, make: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XLSX, JSONL and Parquet files over the row limit are refused the same way."""
    import pandas as pd

    import flora_batch.manifest.rows as rows_module

    monkeypatch.setattr(rows_module, "MAX_ROWS", 50)
    frame = pd.DataFrame({"sku": [f"S{i}" for i in range(60)], "title": ["Mug"] * 60})
    path = tmp_path / f"p.{make}"
    if make == "xlsx":
        frame.to_excel(path, index=False)
    elif make == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    with pytest.raises(ManifestError, match="more than 50 rows"):
        load_rows(path)

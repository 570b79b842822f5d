"""load_manifest and manifest_from_rows: every key, every problem, at its exact location."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from unit_support import MANIFEST, PRODUCTS_CSV, located

from flora_batch.config import Settings
from flora_batch.errors import ManifestError, ManifestProblems, UsageError
from flora_batch.locations import ledger_location
from flora_batch.manifest import load_manifest, manifest_from_rows
from flora_batch.manifest.rows import load_rows

Write = Callable[[str, str | bytes], Path]
Problems = Callable[[str], list[str]]
OUTPUT_NAME = '  name: "{sku}/{technique}-{output_id}{ext}"'
SLUG_MSG = "technique must be a technique slug like studio-shot, not "


def test_full_manifest_loads(tmp_path: Path, write: Write) -> None:
    """Every key is read, and relative paths resolve against the manifest's folder."""
    write("sub/products.csv", PRODUCTS_CSV)
    extra = "concurrency: 8\nledger: state.db\nskip_invalid: yes\n"
    m = load_manifest(write("sub/m.yaml", MANIFEST + extra))
    assert m.name == "spring"
    assert [(u.slug, u.inputs, u.line) for u in m.uses] == [
        ("studio-shot", {"product": "{image_url}", "backdrop": "{colour} paper"}, 2)
    ]
    assert m.uses[0].input_lines == {"product": 6, "backdrop": 7}
    assert m.rows.path == tmp_path / "sub" / "products.csv"
    assert m.rows.line == 3
    assert m.id_column == "sku"
    assert m.output_dir == tmp_path / "sub" / "out"
    assert m.output_name == "{sku}/{technique}-{output_id}{ext}"
    assert (m.max_cost, m.concurrency, m.skip_invalid) == (5.0, 8, True)
    assert m.ledger == "state.db"  # as written: locations.ledger_location resolves it
    assert ledger_location(m, Settings()) == str(tmp_path / "sub" / "state.db")
    assert m.lines["id"] == 4
    assert m.lines["output.name"] == 10


def test_defaults_for_optional_keys(tmp_path: Path, write: Write) -> None:
    """Without output, limits or id, the defaults apply."""
    write("products.csv", PRODUCTS_CSV)
    text = 'name: b\ntechnique: palette-pull\nrows: products.csv\ninputs:\n  image: "{image_url}"\n'
    m = load_manifest(write("m.yaml", text))
    assert m.output_dir == tmp_path / "results" / "b"
    assert m.output_name == "{technique}/row-{row}-{key:.8}-{output_id}{ext}"
    assert m.id_column is None
    assert (m.max_cost, m.concurrency, m.ledger, m.skip_invalid) == (None, None, None, False)


def test_text_argument_is_used_instead_of_the_file(tmp_path: Path, write: Write) -> None:
    """Given text, load_manifest does not read the manifest file; a BOM is fine."""
    write("products.csv", PRODUCTS_CSV)
    m = load_manifest(tmp_path / "never-written.yaml", "\ufeff" + MANIFEST)
    assert m.name == "spring"


def test_ledger_url_is_kept_as_given(write: Write) -> None:
    """A ledger URL is not resolved as a path."""
    write("products.csv", PRODUCTS_CSV)
    url = "postgresql://db.internal/flora"
    m = load_manifest(write("m.yaml", MANIFEST + f"ledger: {url}\n"))
    assert m.ledger == url


def test_ledger_location_ranks_settings_then_manifest_then_default_and_expands_home(
    tmp_path: Path, write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """settings.ledger beats the manifest's, which beats the default; ``~`` means HOME anywhere."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write("products.csv", PRODUCTS_CSV)
    text = MANIFEST.replace("products.csv", "../products.csv")
    m = load_manifest(write("sub/m.yaml", text))
    assert ledger_location(m, Settings()) == str(tmp_path / "sub" / "spring.ledger.db")
    here = load_manifest(write("sub/h.yaml", text + "ledger: ~/flora/l.db\n"))
    home = str(tmp_path / "home" / "flora" / "l.db")
    assert ledger_location(here, Settings()) == home
    assert ledger_location(here, Settings(ledger="~/x.db")) == str(tmp_path / "home" / "x.db")
    assert ledger_location(None, Settings(ledger="~/flora/l.db")) == home
    assert ledger_location(None, Settings(ledger="rel.db")) == "rel.db"  # the shell's folder
    url = "postgresql://u:pa$$~@db/flora"
    assert ledger_location(here, Settings(ledger=url)) == url
    assert ledger_location(None, Settings(ledger="sqlite:///~/l.db")) == "sqlite:///~/l.db"
    with pytest.raises(UsageError):
        ledger_location(None, Settings())


EMPTY = "m.yaml:1: the manifest is empty: it needs name, technique, rows and inputs"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "name: demo\n  bad: x\n",
            "m.yaml:2:6: not valid YAML: mapping values are not allowed here",
        ),
        (
            "name: [demo\n",
            "m.yaml:2:1: not valid YAML: while parsing a flow sequence, "
            "expected ',' or ']', but got '<stream end>'",
        ),
        (
            "a: 1\n---\nb: 2\n",
            "m.yaml:2:1: not valid YAML: expected a single document in the stream, "
            "but found another document",
        ),
        ("name: x\x01\n", "m.yaml:1:8: not valid YAML: character U+0001 is not allowed"),
        (
            "- a\n",
            "m.yaml:1: the manifest must be a mapping (name: ..., technique: ...), not a list",
        ),
        ("", EMPTY),
        ("# just a comment\n", EMPTY),
    ],
)
def test_broken_yaml_is_located(load_problems: Problems, text: str, expected: str) -> None:
    """YAML syntax errors and non-mapping documents point at file:line[:column]."""
    assert load_problems(text) == [expected]


def test_deeply_nested_yaml_is_a_problem(load_problems: Problems) -> None:
    """A pathological nesting depth is reported, not a RecursionError."""
    text = "a: " + "[" * 5000 + "]" * 5000 + "\n"
    assert load_problems(text) == ["m.yaml: not valid YAML: nested too deeply"]


def test_unknown_key_suggests_the_closest(load_problems: Problems) -> None:
    """A misspelt key gets a "did you mean" at its line."""
    text = MANIFEST.replace("max_cost: 5", "max_cots: 5")
    assert load_problems(text) == [
        "m.yaml:11: unknown key 'max_cots' in the manifest; did you mean 'max_cost'?"
    ]


def test_unknown_key_lists_choices_when_nothing_is_close(load_problems: Problems) -> None:
    """Without a close match, the known keys are listed."""
    [problem] = load_problems(MANIFEST + "zzz: 1\n")
    assert problem.startswith("m.yaml:12: unknown key 'zzz' in the manifest; expected one of: name")


def test_repeated_key_is_reported(load_problems: Problems) -> None:
    """YAML would silently keep the last of two equal keys; we refuse."""
    assert load_problems(MANIFEST + "name: other\n") == [
        "m.yaml:12: the manifest has 'name' twice (first on line 1)"
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("name: spring", "name: spring catalog", "m.yaml:1: name 'spring catalog' must be 1-100"),
        ("name: spring", "name: ..", "m.yaml:1: name '..' must be 1-100 letters"),
        ("name: spring", f"name: {'x' * 101}", "m.yaml:1: name 'xxxx"),
        ("name: spring", "name: [a, b]", "m.yaml:1: name must be text, not a list"),
        ("max_cost: 5", "max_cost: -1", "m.yaml:11: max_cost must be a positive number"),
        ("max_cost: 5", "max_cost: '5'", "m.yaml:11: max_cost must be a positive number"),
        ("max_cost: 5", "max_cost: .inf", "m.yaml:11: max_cost must be a positive number"),
        ("max_cost: 5", "max_cost: true", "m.yaml:11: max_cost must be a positive number"),
        ("max_cost: 5", "concurrency: 0", "m.yaml:11: concurrency must be a whole number from 1"),
        ("max_cost: 5", "concurrency: 65", "m.yaml:11: concurrency must be a whole number from 1"),
        ("max_cost: 5", "concurrency: 2.5", "m.yaml:11: concurrency must be a whole number"),
        ("max_cost: 5", "skip_invalid: maybe", "m.yaml:11: skip_invalid must be true or false"),
        ("max_cost: 5", "ledger: [a]", "m.yaml:11: ledger must be text, not a list"),
        ("id: sku", "id: {a: b}", "m.yaml:4: id must be text, not a mapping"),
        (OUTPUT_NAME, "  name: [x]", "m.yaml:10: output.name must be text"),
        (OUTPUT_NAME, "  name: '{sku'", "m.yaml:10: output.name: template '{sku' is not valid"),
        (OUTPUT_NAME, "  nme: x", "m.yaml:10: unknown key 'nme' in output; did you mean 'name'?"),
        (
            "technique: studio-shot",
            "technique: Studio Shot!",
            f"m.yaml:2: {SLUG_MSG}'Studio Shot!'",
        ),
        ("technique: studio-shot", "technique: [a]", f"m.yaml:2: {SLUG_MSG}a list"),
        ("technique: studio-shot", "technique:", f"m.yaml:2: {SLUG_MSG}a value"),
    ],
)
def test_wrong_types_are_located(
    load_problems: Problems, old: str, new: str, expected: str
) -> None:
    """Each badly typed value is reported at its own line."""
    text = MANIFEST.replace(old, new)
    assert text != MANIFEST
    [problem] = load_problems(text)
    assert problem.startswith(expected)


def test_output_must_be_a_mapping(load_problems: Problems) -> None:
    """output: given a string is refused at its line."""
    text = MANIFEST.replace(f"output:\n  dir: out\n{OUTPUT_NAME}\n", "output: out\n")
    assert load_problems(text) == ["m.yaml:8: output must be a mapping with dir and/or name"]


INPUTS = 'inputs:\n  product: "{image_url}"\n  backdrop: "{colour} paper"\n'


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        ("name: spring\n", "m.yaml:1: missing required key 'name'"),
        ("rows: products.csv\n", "m.yaml:1: missing required key 'rows'"),
        (
            "technique: studio-shot\n",
            "m.yaml:1: missing required key 'technique' (or a 'techniques' list)",
        ),
        (INPUTS, "m.yaml:1: missing required key 'inputs'"),
    ],
)
def test_missing_required_keys(load_problems: Problems, drop: str, expected: str) -> None:
    """Each missing required key is reported at the top of the manifest."""
    assert drop in MANIFEST
    assert load_problems(MANIFEST.replace(drop, "")) == [expected]


def test_every_problem_is_reported_at_once(load_problems: Problems) -> None:
    """Several problems come back together, in the order they were found."""
    text = (
        "name: bad name\n"
        "technique: studio-shot\n"
        "rows: nowhere.csv\n"
        "inputs:\n"
        '  product: "{image_url"\n'
        "concurrency: 100\n"
        "colour: red\n"
    )
    problems = load_problems(text)
    assert [p.split(":")[1] for p in problems] == ["7", "1", "5", "3", "6"]
    assert "rows file 'nowhere.csv' not found" in problems[3]


def test_rows_file_problems(load_problems: Problems) -> None:
    """A missing rows file and an unknown suffix are reported at the rows line."""
    [missing] = load_problems(MANIFEST.replace("rows: products.csv", "rows: gone.csv"))
    assert missing.startswith("m.yaml:3: rows file 'gone.csv' not found")
    assert load_problems(MANIFEST.replace("rows: products.csv", "rows: products.xls")) == [
        "m.yaml:3: rows file 'products.xls': cannot read .xls files; "
        "use .csv, .tsv, .xlsx, .jsonl or .parquet"
    ]
    assert load_problems(MANIFEST.replace("rows: products.csv", "rows: ''")) == [
        "m.yaml:3: rows must name a file (CSV, XLSX, JSONL or Parquet) or list the rows"
    ]


def test_rows_mapping_form(tmp_path: Path, write: Write) -> None:
    """rows: {path, encoding, sheet} carries the reading options."""
    write("products.csv", PRODUCTS_CSV)
    rows = "rows:\n  path: products.csv\n  encoding: cp1252"
    m = load_manifest(write("m.yaml", MANIFEST.replace("rows: products.csv", rows)))
    assert (m.rows.path, m.rows.encoding, m.rows.sheet) == (
        tmp_path / "products.csv",
        "cp1252",
        None,
    )


def test_rows_mapping_needs_a_path(load_problems: Problems) -> None:
    """rows: as a mapping without path is refused; unknown keys too."""
    text = MANIFEST.replace("rows: products.csv", "rows:\n  file: products.csv")
    assert load_problems(text) == [
        "m.yaml:4: unknown key 'file' in rows; expected one of: path, encoding, sheet",
        "m.yaml:3: rows needs a path (or write rows: <file>)",
    ]


def test_inline_rows_keep_values_as_written(write: Write) -> None:
    """Inline rows are strings as typed (00123 stays), null is empty, lines are the items'."""
    text = (
        "name: inline\n"
        "technique: palette-pull\n"
        "inputs:\n"
        '  image: "{url}"\n'
        "rows:\n"
        "  - {sku: 00123, url: 'https://media.flora.ai/a.png', price: 1.50}\n"
        "  - sku: yes\n"
        "    url: https://media.flora.ai/b.png\n"
        "    price: ~\n"
    )
    m = load_manifest(write("m.yaml", text))
    columns, rows = load_rows(m.rows, m.path)
    assert columns == ["sku", "url", "price"]
    assert [(r.index, r.line, r.values) for r in rows] == [
        (0, 6, {"sku": "00123", "url": "https://media.flora.ai/a.png", "price": "1.50"}),
        (1, 7, {"sku": "yes", "url": "https://media.flora.ai/b.png", "price": ""}),
    ]


def test_inline_row_problems(load_problems: Problems) -> None:
    """Nested cells, non-mapping items and an empty list are located in the manifest."""
    base = 'name: x\ntechnique: palette-pull\ninputs:\n  image: "{url}"\n'
    assert load_problems(base + "rows:\n  - {url: [a, b]}\n  - just text\n") == [
        "m.yaml:6: cell 'url' must be a single value, not a list",
        "m.yaml:7: each row must be a mapping of column: value, not a value",
    ]
    assert load_problems(base + "rows: []\n") == ["m.yaml:5: rows is an empty list"]


def test_inputs_problems(load_problems: Problems) -> None:
    """Empty inputs, an empty template and broken templates are located."""
    base = "name: x\ntechnique: studio-shot\nrows: products.csv\n"
    [empty] = load_problems(base + "inputs: {}\n")
    assert empty.startswith("m.yaml:4: inputs must map each technique input id to a template")
    assert load_problems(base + "inputs:\n  product:\n") == [
        "m.yaml:5: input 'product' is empty: give a template, or leave the input out"
    ]
    assert load_problems(base + "inputs:\n  product: 'x}'\n") == [
        "m.yaml:5: input 'product': template 'x}' is not valid: "
        "Single '}' encountered in format string (write {{ for a literal {)"
    ]
    assert load_problems(base + "inputs:\n  product: '{a!r}'\n") == [
        "m.yaml:5: input 'product': template '{a!r}': conversions like !r are not supported"
    ]
    assert load_problems(base + "inputs:\n  product: a\n  product: b\n") == [
        "m.yaml:6: input 'product' is given twice (first on line 5)"
    ]


TWO = """\
name: launch
techniques:
  - technique: studio-shot
    inputs:
      product: "{image_url}"
  - technique: product-animator
    inputs:
      product: "{image_url}"
      motion: slow turntable
rows: products.csv
output:
  name: "{technique}/{sku}-{output_id}{ext}"
"""


def test_techniques_list(write: Write) -> None:
    """techniques: a list of {technique, inputs}, each with its own line."""
    write("products.csv", PRODUCTS_CSV)
    m = load_manifest(write("m.yaml", TWO))
    assert [(u.slug, u.inputs, u.line) for u in m.uses] == [
        ("studio-shot", {"product": "{image_url}"}, 3),
        ("product-animator", {"product": "{image_url}", "motion": "slow turntable"}, 6),
    ]


FIRST_USE = '  - technique: studio-shot\n    inputs:\n      product: "{image_url}"\n'


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "name: launch\n",
            "name: launch\ntechnique: studio-shot\n",
            "m.yaml:3: give either technique (one) or techniques (a list), not both",
        ),
        (
            "rows: products.csv\n",
            "rows: products.csv\ninputs: {a: b}\n",
            "m.yaml:11: with techniques:, write inputs under each technique",
        ),
        (
            "  - technique: product-animator",
            "  - technique: studio-shot",
            "m.yaml:6: technique 'studio-shot' is listed twice (first on line 3)",
        ),
        (
            FIRST_USE,
            "  - studio-shot\n",
            "m.yaml:3: each techniques entry must be a mapping, not a value",
        ),
        (
            FIRST_USE,
            "  - technique: studio-shot\n",
            "m.yaml:3: each techniques entry needs technique and inputs",
        ),
        (
            "  - technique: studio-shot\n",
            "  - technique: studio-shot\n    output: x\n",
            "m.yaml:4: unknown key 'output' in a techniques entry; "
            "expected one of: technique, inputs",
        ),
    ],
)
def test_techniques_list_problems(
    load_problems: Problems, old: str, new: str, expected: str
) -> None:
    """Each problem of the list form is reported at its entry."""
    assert old in TWO
    assert load_problems(TWO.replace(old, new)) == [expected]


def test_empty_techniques_list(load_problems: Problems) -> None:
    """techniques: [] is refused at its line, and a second techniques key too."""
    text = TWO.replace("name: launch\n", "name: launch\ntechniques: []\n")
    assert load_problems(text) == [
        "m.yaml:3: the manifest has 'techniques' twice (first on line 2)",
        "m.yaml:2: techniques must be a non-empty list of {technique: ..., inputs: {...}}",
    ]


def test_manifest_file_problems(tmp_path: Path, write: Write) -> None:
    """A missing or non-UTF-8 manifest file is a located ManifestProblems."""
    with pytest.raises(ManifestProblems) as info:
        load_manifest(tmp_path / "gone.yaml")
    assert located(info.value.problems, tmp_path) == ["gone.yaml: manifest not found"]
    with pytest.raises(ManifestProblems) as info:
        load_manifest(write("bad.yaml", b"name: caf\xe9\n"))
    assert located(info.value.problems, tmp_path) == [
        "bad.yaml:1: the manifest must be UTF-8 text (byte 0xe9 is not)"
    ]
    with pytest.raises(ManifestProblems):
        load_manifest(tmp_path)


def test_manifest_from_rows(tmp_path: Path, write: Write) -> None:
    """A bare CSV becomes a manifest: column names become templates, the stem the name."""
    path = write("Spring 2024 (final).csv", PRODUCTS_CSV)
    inputs = {"product": "image_url", "backdrop": "{colour} paper"}
    m = manifest_from_rows(path, "studio-shot", inputs)
    assert m.name == "Spring-2024-final"
    assert m.uses[0].inputs == {"product": "{image_url}", "backdrop": "{colour} paper"}
    assert m.rows.path == path
    assert m.path == path
    assert m.output_dir == tmp_path / "results" / "Spring-2024-final"
    assert m.output_name == "{technique}/row-{row}-{key:.8}-{output_id}{ext}"


def test_manifest_from_rows_options(tmp_path: Path, write: Write) -> None:
    """name, output_dir, id_column and encoding are passed through."""
    path = write("p.csv", PRODUCTS_CSV)
    m = manifest_from_rows(
        path,
        "studio-shot",
        {"product": "image_url"},
        name="b1",
        output_dir=tmp_path / "o",
        id_column="sku",
        encoding="cp1252",
    )
    assert (m.name, m.output_dir, m.id_column) == ("b1", tmp_path / "o", "sku")
    assert m.rows.encoding == "cp1252"
    assert m.output_name == "{technique}/{sku}-{output_id}{ext}"


def test_manifest_from_rows_problems(tmp_path: Path) -> None:
    """Bad slug, bad name, a broken template and a missing file are all reported."""
    with pytest.raises(ManifestProblems) as info:
        manifest_from_rows(tmp_path / "gone.csv", "Not A Slug", {"p": "{x"}, name="a b")
    assert located(info.value.problems, tmp_path) == [
        "gone.csv: batch name 'a b' must be 1-100 letters, digits, '.', '_' or '-'",
        "gone.csv: technique 'Not A Slug' is not a technique slug (like studio-shot)",
        "gone.csv: --input p={x: template '{x' is not valid: expected '}' before end of string "
        "(write {{ for a literal {)",
        "gone.csv: rows file not found",
    ]
    with pytest.raises(ManifestError, match="give at least one input"):
        manifest_from_rows(tmp_path / "x.csv", "studio-shot", {})


def test_more_value_problems(load_problems: Problems) -> None:
    """An empty name, an empty input id and an int YAML cannot read are all located."""
    assert load_problems(MANIFEST.replace("name: spring", "name:")) == [
        "m.yaml:1: name is empty: give the batch a name (it is part of every job key)"
    ]
    assert load_problems(MANIFEST.replace("  backdrop:", "  '':")) == [
        "m.yaml:7: an input id must be a non-empty name"
    ]
    assert load_problems(MANIFEST + "concurrency: 0x_\n") == [
        "m.yaml:12: concurrency must be a whole number from 1 to 64"
    ]


def test_optional_keys_left_empty_mean_the_default(write: Write) -> None:
    """max_cost:, output: and the other optional keys may be written without a value."""
    write("products.csv", PRODUCTS_CSV)
    text = MANIFEST.replace("max_cost: 5", "max_cost:\nconcurrency:\nledger:\nskip_invalid:")
    m = load_manifest(write("m.yaml", text))
    assert (m.max_cost, m.concurrency, m.ledger, m.skip_invalid) == (None, None, None, False)


def test_inline_cell_problems(load_problems: Problems) -> None:
    """Inline rows follow the file rules: repeated columns and huge cells are located."""
    base = 'name: x\ntechnique: palette-pull\ninputs:\n  image: "{url}"\nrows:\n'
    assert load_problems(base + "  - {url: a, url: b}\n") == [
        "m.yaml:6: column 'url' is blank or repeated in this row"
    ]
    huge = "x" * 100_001
    assert load_problems(base + f"  - {{url: {huge}}}\n") == [
        "m.yaml:6:url: cell is 100,001 bytes; the limit is 100,000"
    ]
    assert len(load_problems(base + f"  - {{url: {huge}, b: {huge}}}\n")) == 2


def test_manifest_from_rows_more_problems(tmp_path: Path, write: Write) -> None:
    """An unknown suffix and an empty input id are reported for the quick form too."""
    with pytest.raises(ManifestProblems) as info:
        manifest_from_rows(write("p.xls", b"x"), "studio-shot", {" ": "image_url"})
    assert located(info.value.problems, tmp_path) == [
        "p.xls: --input  =image_url: the input id is empty",
        "p.xls: cannot read .xls files; use .csv, .tsv, .xlsx, .jsonl or .parquet",
    ]

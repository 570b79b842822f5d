"""The job key contract: what changes a key and what never does."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from unit_support import CATALOG, make_spec

from flora_batch.keys import (
    BY_ROW_ID,
    attempt_key,
    canonical_json,
    job_key,
    key_material,
    normalise,
)
from flora_batch.manifest import build_jobs, load_manifest
from flora_batch.manifest.rows import load_rows
from flora_batch.types import JobSpec, RunInput

words = st.text(min_size=1, max_size=20)
inputs = st.lists(
    st.tuples(words, st.sampled_from(["text", "imageUrl", "videoUrl"]), st.text(max_size=40)),
    min_size=1,
    max_size=4,
    unique_by=lambda t: normalise(t[0]),
)
specs = st.builds(
    lambda batch, technique, ins, occurrence: make_spec(
        ins, batch=batch, technique=technique, occurrence=occurrence
    ),
    words,
    words,
    inputs,
    st.integers(0, 5),
)


def test_key_format_and_golden_value() -> None:
    """The key is fk1: plus 32 hex digits, and this spec's key is pinned forever."""
    spec = make_spec((("product", "imageUrl", "https://media.flora.ai/x.png"),))
    assert canonical_json(key_material(spec)) == (
        '{"batch":"spring","inputs":[["product","imageUrl","https://media.flora.ai/x.png"]],'
        '"occurrence":0,"technique":"studio-shot"}'
    )
    assert re.fullmatch(r"fk1:[0-9a-f]{32}", job_key(spec))
    assert job_key(spec) == "fk1:d9613e191d7e677507932002efe4dfa0"


def test_a_twin_told_apart_by_its_row_id_has_an_fk2_key_pinned_forever() -> None:
    """Occurrence BY_ROW_ID hashes {"id": <row id>} in place of the number, tagged fk2:."""
    spec = make_spec(
        (("product", "imageUrl", "https://media.flora.ai/x.png"),),
        row_id=" A1 ",
        occurrence=BY_ROW_ID,
    )
    assert canonical_json(key_material(spec)) == (
        '{"batch":"spring","inputs":[["product","imageUrl","https://media.flora.ai/x.png"]],'
        '"occurrence":{"id":"A1"},"technique":"studio-shot"}'
    )
    assert job_key(spec) == "fk2:516a1d66e5f45ad3b49418d20fd803bf"
    assert job_key(replace(spec, occurrence=0)) == "fk1:d9613e191d7e677507932002efe4dfa0"
    with pytest.raises(ValueError, match="row id"):
        job_key(replace(spec, row_id=None))


def test_key_material_is_exactly_the_documented_fields() -> None:
    """Only batch, technique, sorted inputs and occurrence are hashed."""
    spec = make_spec((("b", "text", " x "), ("a", "text", "y")), occurrence=2)
    assert key_material(spec) == {
        "batch": "spring",
        "technique": "studio-shot",
        "inputs": [["a", "text", "y"], ["b", "text", "x"]],
        "occurrence": 2,
    }


def test_canonical_json() -> None:
    """Sorted keys, no spaces, non-ASCII kept as is."""
    assert canonical_json({"b": 1, "a": ["é", None]}) == '{"a":["é",null],"b":1}'


JSON_TREES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(tree=st.dictionaries(st.text(), JSON_TREES, max_size=5))
def test_canonical_json_is_json_dumps_spelling(tree: dict[str, object]) -> None:
    """The prebuilt C encoder spells every tree as ``json.dumps`` with the same options:
    keys hashed today must be the keys hashed by earlier versions."""
    expected = json.dumps(tree, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(tree) == expected


@settings(max_examples=200)
@given(spec=specs, data=st.data())
def test_key_ignores_input_order(spec: JobSpec, data: st.DataObject) -> None:
    """Listing the inputs in another order keeps the key."""
    shuffled = data.draw(st.permutations(spec.inputs))
    assert job_key(replace(spec, inputs=tuple(shuffled))) == job_key(spec)


@settings(max_examples=200)
@given(
    spec=specs,
    row_index=st.integers(0, 10_000),
    row_id=st.none() | words,
    row=st.dictionaries(words, st.text(max_size=10), max_size=4),
    source=st.text(max_size=10),
    output_name=st.text(max_size=10),
)
def test_key_ignores_position_id_and_other_columns(
    spec: JobSpec,
    row_index: int,
    row_id: str | None,
    row: dict[str, str],
    source: str,
    output_name: str,
) -> None:
    """Row position, row id, unrelated columns, source and output naming are not hashed."""
    other = replace(
        spec, row_index=row_index, row_id=row_id, row=row, source=source, output_name=output_name
    )
    assert job_key(other) == job_key(spec)


@settings(max_examples=200)
@given(spec=specs, new=words, field=st.sampled_from(["batch", "technique"]))
def test_key_changes_with_batch_or_technique(spec: JobSpec, new: str, field: str) -> None:
    """A different batch name or technique is a different job."""
    assume(normalise(new) != normalise(getattr(spec, field)))
    other = replace(spec, batch=new) if field == "batch" else replace(spec, technique=new)
    assert job_key(other) != job_key(spec)


@settings(max_examples=300)
@given(spec=specs, data=st.data())
def test_key_changes_with_any_input_part(spec: JobSpec, data: st.DataObject) -> None:
    """Changing one input's id, type or value changes the key."""
    position = data.draw(st.integers(0, len(spec.inputs) - 1))
    part = data.draw(st.sampled_from(["id", "type", "value"]))
    old = spec.inputs[position]
    new_value = data.draw(words)
    changed = replace(old, **{part: new_value})
    assume(normalise(getattr(changed, part)) != normalise(getattr(old, part)))
    assume(all(normalise(changed.id) != normalise(i.id) for i in spec.inputs if i is not old))
    inputs = tuple(changed if i == position else x for i, x in enumerate(spec.inputs))
    assert job_key(replace(spec, inputs=inputs)) != job_key(spec)


@settings(max_examples=100)
@given(spec=specs, extra=st.integers(1, 5))
def test_key_changes_with_occurrence(spec: JobSpec, extra: int) -> None:
    """The second identical row is a second job."""
    assert job_key(replace(spec, occurrence=spec.occurrence + extra)) != job_key(spec)


def test_key_normalises_whitespace_and_unicode() -> None:
    """Surrounding spaces and NFD versus NFC spellings give one key."""
    nfc = make_spec((("prompt", "text", "Café"),))
    nfd = make_spec((("prompt ", " text", unicodedata.normalize("NFD", "  Café\n")),))
    assert job_key(nfc) == job_key(nfd)


def test_attempt_key() -> None:
    """Attempt 1 sends the key itself, later attempts a -rN suffix."""
    assert attempt_key("fk1:abc", 1) == "fk1:abc"
    assert attempt_key("fk1:abc", 2) == "fk1:abc-r2"
    assert attempt_key("fk1:abc", 10) == "fk1:abc-r10"
    with pytest.raises(ValueError):
        attempt_key("fk1:abc", 0)


ROWS = [
    {"sku": "A1", "url": "https://media.flora.ai/a.png", "colour": "red", "note": "x"},
    {"sku": "B2", "url": "https://media.flora.ai/b.png", "colour": "blue", "note": "y"},
    {"sku": "C3", "url": "https://media.flora.ai/a.png", "colour": "red", "note": "z"},
    {"sku": "D4", "url": "https://media.flora.ai/a.png", "colour": "red", "note": "x"},
]


def _keys(tmp: Path, rows: list[dict[str, str]], id_line: str = "id: sku\n") -> dict[str, str]:
    """sku -> key for a manifest over these rows (written as inline rows)."""
    lines = "".join(
        "  - {" + ", ".join(f"{k}: '{v}'" for k, v in row.items()) + "}\n" for row in rows
    )
    text = (
        "name: keys\ntechnique: studio-shot\n"
        + id_line
        + 'inputs:\n  product: "{url}"\n  backdrop: "{colour} paper"\n'
        + 'output:\n  name: "{sku}-{output_id}"\nrows:\n'
        + lines
    )
    m = load_manifest(tmp / "m.yaml", text)
    columns, parsed = load_rows(m.rows, m.path)
    specs, errors = build_jobs(m, columns, parsed, CATALOG)
    assert errors == []
    return {s.row["sku"]: job_key(s) for s in specs}


@settings(max_examples=50, deadline=None)
@given(order=st.permutations(range(len(ROWS))))
def test_row_order_keeps_the_set_of_keys(
    tmp_path_factory: pytest.TempPathFactory, order: list[int]
) -> None:
    """Reordering rows keeps every row's key (twins too, told apart by id), and without
    an id column the set of keys."""
    tmp = tmp_path_factory.mktemp("order")
    base = _keys(tmp, ROWS)
    moved = _keys(tmp, [ROWS[i] for i in order])
    assert moved == base
    plain = _keys(tmp, ROWS, id_line="")
    assert set(_keys(tmp, [ROWS[i] for i in order], id_line="").values()) == set(plain.values())


TWIN = {"url": "https://media.flora.ai/a.png", "colour": "red", "note": "t"}


@settings(max_examples=40, deadline=None)
@given(at=st.integers(0, len(ROWS)), drop=st.sampled_from(["A1", "C3", "D4", None]))
def test_inserting_or_deleting_a_twin_row_moves_no_other_key(
    tmp_path_factory: pytest.TempPathFactory, at: int, drop: str | None
) -> None:
    """With an id column, a twin row inserted anywhere (or one of three deleted) leaves the
    key of every other row as it was: keys no longer shift down a group of twins."""
    tmp = tmp_path_factory.mktemp("twins")
    base = _keys(tmp, ROWS)
    grown = [*ROWS[:at], {"sku": "Z9", **TWIN}, *ROWS[at:]]
    edited = [row for row in grown if row["sku"] != drop]
    after = _keys(tmp, edited)
    assert {sku: key for sku, key in after.items() if sku != "Z9"} == {
        sku: key for sku, key in base.items() if sku != drop
    }


def test_unrelated_columns_do_not_matter_and_the_id_only_tells_twins_apart(
    tmp_path: Path,
) -> None:
    """Editing a column no input uses keeps the keys; dropping the id column keeps every
    key but those of identical rows, which it numbered apart by row order instead."""
    base = _keys(tmp_path, ROWS)
    edited = [{**row, "note": row["note"] + "!"} for row in ROWS]
    assert _keys(tmp_path, edited) == base
    plain = _keys(tmp_path, ROWS, id_line="")
    assert plain["B2"] == base["B2"]
    assert {plain[s][:4] for s in ("A1", "C3", "D4")} == {"fk1:"}
    assert {base[s][:4] for s in ("A1", "C3", "D4")} == {"fk2:"}


def test_identical_rows_get_distinct_keys(tmp_path: Path) -> None:
    """A1, C3 and D4 render the same inputs: their ids (or, without an id column,
    occurrences 0, 1, 2) give three keys."""
    keys = _keys(tmp_path, ROWS)
    assert len({keys["A1"], keys["C3"], keys["D4"]}) == 3
    plain = _keys(tmp_path, ROWS, id_line="")
    assert len({plain["A1"], plain["C3"], plain["D4"]}) == 3


def test_run_input_equality_is_by_value() -> None:
    """RunInput compares by value (the planner relies on it)."""
    assert RunInput("a", "text", "x") == RunInput("a", "text", "x")

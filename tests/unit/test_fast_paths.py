"""The shortcuts a 100,000-row batch takes give exactly what the plain paths give.

Keys are computed once per job (``build_keyed_jobs``, ``plan_keyed``), common cells and
path components skip the general checks, and small CSV texts are split into lines by
StringIO: each shortcut is checked here against the general path it stands in for.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from unit_support import CATALOG, MANIFEST, PRODUCTS_CSV, make_spec

from flora_batch.errors import ManifestError
from flora_batch.keys import BY_ROW_ID, canonical_json, job_key
from flora_batch.ledger import records
from flora_batch.manifest import load_manifest, naming, sources
from flora_batch.manifest.cells import MAX_CELL_BYTES, rows_from_cells
from flora_batch.manifest.jobs import build_jobs, build_keyed_jobs, number_occurrences
from flora_batch.manifest.rows import load_rows
from flora_batch.manifest.rows_text import _LINE, _lines
from flora_batch.plan import Known, make_plan, plan_keyed
from flora_batch.types import JobKey, JobState

Write = Callable[[str, str | bytes], Path]


def test_keyed_jobs_carry_their_own_keys(write: Write) -> None:
    """Each key build_keyed_jobs hands on is job_key of its spec; the specs are build_jobs'."""
    csv = PRODUCTS_CSV + "D4,Mug,https://media.flora.ai/p/a1.jpg,peach\n"  # A1's job again
    write("products.csv", csv)
    m = load_manifest(write("m.yaml", MANIFEST))
    columns, rows = load_rows(m.rows, m.path)
    keyed, errors = build_keyed_jobs(m, columns, rows, CATALOG)
    specs, again = build_jobs(m, columns, rows, CATALOG)
    assert errors == again == []
    assert [spec for _, spec in keyed] == specs
    assert [key for key, _ in keyed] == [job_key(spec) for spec in specs]
    assert [spec.occurrence for spec in specs] == [BY_ROW_ID, 0, 0, BY_ROW_ID]  # id: sku


def test_number_occurrences_counts_identical_jobs() -> None:
    """Identical jobs get 0, 1, 2... whatever occurrence they came with; others stay 0.
    When every job has a row id, identical ones are told apart by it instead."""
    same, other = make_spec(), make_spec((("product", "imageUrl", "https://media.flora.ai/y"),))
    numbered = number_occurrences([same, other, replace(same, occurrence=5), same])
    assert [s.occurrence for s in numbered] == [0, 0, 1, 2]
    ids = [replace(s, row_id=f"R{n}") for n, s in enumerate([same, other, same])]
    assert [s.occurrence for s in number_occurrences(ids)] == [BY_ROW_ID, 0, BY_ROW_ID]


def test_plan_keyed_matches_make_plan() -> None:
    """Planning pre-keyed jobs gives make_plan's plan, field for field."""
    specs = [
        make_spec((("product", "imageUrl", f"https://media.flora.ai/{i}"),), row_index=i)
        for i in range(4)
    ]
    known: dict[JobKey, Known] = {
        job_key(specs[1]): (JobState.DONE, "studio-shot", None, 1),
        job_key(specs[2]): (JobState.PLANNED, "studio-shot", None, 2),
        JobKey("fk1:gone"): (JobState.FAILED, "studio-shot", None, 3),
    }
    keyed = [(job_key(s), s) for s in specs]
    assert plan_keyed(keyed, known, CATALOG) == make_plan(specs, known, CATALOG)


def test_canonical_json_is_json_dumps() -> None:
    """The prebuilt encoder spells values exactly as the documented json.dumps call."""
    value = {"b": [["id", "text", "Café ✓ \"q\""]], "a": 1, "occurrence": 0, "z": None}
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(value) == expected


def _slow_component(part: str) -> str:
    """naming's general per-character rule, for comparison with its ASCII shortcut."""
    text = unicodedata.normalize("NFC", part)
    return "".join("_" if naming._bad_char(c) else c for c in text)


@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=30))
def test_ascii_components_are_cleaned_like_any_other(part: str) -> None:
    """For ASCII text the shortcut replaces exactly the characters the general rule does."""
    cleaned = naming._clean_component(part)
    replaced = _slow_component(part).strip().rstrip(". ")
    if replaced and replaced.split(".", 1)[0].rstrip(" ").upper() in naming._RESERVED:
        replaced = "_" + replaced
    assert cleaned == (naming._fit(replaced) if replaced else "")


@given(st.text(alphabet="ab,\"\r\n\u2028\x0b", max_size=40))
def test_small_texts_split_into_the_same_lines(text: str) -> None:
    """StringIO's lines (small texts) are the regex's lines (big texts)."""
    assert list(_lines(text)) == [m.group() for m in _LINE.finditer(text)]


def test_cell_size_limit_still_holds_past_the_shortcut() -> None:
    """Short cells skip the byte count; long ones are still measured in UTF-8 bytes."""
    fits = "é" * (MAX_CELL_BYTES // 2)  # 2 bytes a character: exactly the limit
    _, rows = rows_from_cells("r.csv", ["a"], [(2, [f"  {fits}  "])])
    assert rows[0].values == {"a": fits}
    too_big = "é" * (MAX_CELL_BYTES // 2 + 1)
    with pytest.raises(ManifestError, match=r"cell is 100,002 bytes"):
        rows_from_cells("r.csv", ["a"], [(2, [too_big])])


_URL_PART = st.text(alphabet="aZ09-._:@[]/?#% \t\n\x00é\u3002", max_size=12)


@given(
    st.sampled_from(["https://", "HTTPS://", "https:/", "http://", "file://", ""]),
    _URL_PART,
    st.sampled_from(["", "/", "?", "#", ":443/", "@h/", "/é"]),
    _URL_PART,
    st.sampled_from([("media.flora.ai",), (".a", "0"), ("a.z",)]),
)
def test_plain_https_urls_classify_like_urlsplit(
    scheme: str, host: str, sep: str, rest: str, hosts: tuple[str, ...]
) -> None:
    """The plain-https shortcut of ``classify`` gives what the urlsplit path gives."""
    value = scheme + host + sep + rest
    fast = sources.classify(value, hosts)
    saved = sources._PLAIN_HTTPS_RE
    sources._PLAIN_HTTPS_RE = re.compile(r"(?!)")  # never matches: the general path
    try:
        assert fast == sources.classify(value, hosts)
    finally:
        sources._PLAIN_HTTPS_RE = saved


def test_a_broken_file_url_is_a_located_problem_not_a_crash() -> None:
    """``file://[`` (brackets urlsplit refuses) is a problem with the cell, like any bad URL."""
    assert sources.classify("file://[") == ("error", "is not a valid URL")


def test_plain_https_shortcut_is_taken() -> None:
    """The shortcut applies to the usual cell (a host's image), in any case of the host."""
    value = "https://Media.Flora.AI/p/a1.jpg?w=1#x"
    assert sources._PLAIN_HTTPS_RE.fullmatch(value) is not None
    assert sources.classify(value, ("media.flora.ai",)) == ("url", value)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(_JSON, st.sampled_from(["", " ", "\n", "x", "]", "\ufeff"]), st.booleans())
def test_ledger_json_reads_like_json_loads(value: object, extra: str, before: bool) -> None:
    """The listing's JSON reader gives json.loads' value, or raises json.loads' error."""
    text = records.dumps(value)
    text = extra + text if before else text + extra
    try:
        expected = json.loads(text)
    except json.JSONDecodeError as exc:
        with pytest.raises(json.JSONDecodeError) as info:
            records._loads(text)
        assert str(info.value) == str(exc)
    else:
        assert records._loads(text) == expected

"""Junk in, ManifestError out: no input makes the front half raise anything else.

Each case runs the whole pure pipeline (load_manifest, load_rows, build_jobs, make_plan),
so a crash anywhere in it shows up here.  About 1,100 generated cases in all.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from unit_support import CATALOG, MANIFEST, PRODUCTS_CSV

from flora_batch.errors import ManifestError
from flora_batch.manifest import TOP_KEYS, build_jobs, load_manifest
from flora_batch.manifest.rows import RowsSource, load_rows
from flora_batch.plan import make_plan

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
BOMS = st.sampled_from([b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder per module, with a good rows file beside the fuzzed manifests."""
    path = tmp_path_factory.mktemp("fuzz")
    (path / "products.csv").write_text(PRODUCTS_CSV, encoding="utf-8")
    return path


def run_pipeline(manifest: Path, text: str | None = None) -> None:
    """Run everything a `flora-batch plan` would; only ManifestError may escape."""
    stage = "manifest"
    try:
        m = load_manifest(manifest, text)
        stage = "rows"
        columns, rows = load_rows(m.rows, m.path)
        stage = "jobs"
        specs, errors = build_jobs(m, columns, rows, CATALOG)
        make_plan(specs, {}, CATALOG)
        event(f"built {'some' if specs else 'no'} jobs, {'some' if errors else 'no'} errors")
    except ManifestError as exc:
        assert str(exc)
        event(f"ManifestError from {stage}")


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """The good manifest with a few characters deleted, replaced or inserted."""
    text = MANIFEST
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        text = text[:at] + draw(st.text(max_size=3)) + text[at + cut :]
    return text


@settings(FUZZ, max_examples=300)
@given(text=st.text(max_size=300) | mutated())
def test_random_text_as_a_manifest(folder: Path, text: str) -> None:
    """Any text, broken YAML included, gives a Manifest or a ManifestError."""
    run_pipeline(folder / "m.yaml", text)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["{sku}", "{nope}", "{", "}}", "{a!r}", "products.csv", "../x.csv"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
templates = st.sampled_from(
    ["{image_url}", "{title} {colour}", "{nope}", "{}", "x}", "", "{sku:d}"]
)
inputs = st.dictionaries(
    st.sampled_from(["product", "backdrop", "image", "motion", "voice", "prodcut"])
    | st.text(max_size=5),
    templates | values,
    max_size=3,
)
good_values = {
    "name": st.sampled_from(["spring", "a b", "..", ""]) | values,
    "technique": st.sampled_from(sorted(CATALOG)) | values,
    "rows": st.sampled_from(["products.csv", "gone.csv", "products.txt"]) | values,
    "inputs": inputs | values,
    "id": st.sampled_from(["sku", "SKU", "title"]) | values,
    "output": st.fixed_dictionaries({}, optional={"dir": values, "name": templates | values})
    | values,
    "techniques": st.lists(
        st.fixed_dictionaries({"technique": st.sampled_from(sorted(CATALOG)), "inputs": inputs}),
        max_size=3,
    )
    | values,
}
BASE = yaml.safe_load(MANIFEST)


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, object]:
    """A good manifest with a few keys replaced, removed or added (random or misspelt)."""
    data = dict(BASE)
    for key in draw(st.lists(st.sampled_from([*TOP_KEYS, "nmae", "extra"]), max_size=3)):
        if draw(st.booleans()) and key in data:
            del data[key]
        else:
            data[key] = draw(good_values.get(key, values))
    return data


@settings(FUZZ, max_examples=300)
@given(data=manifests())
def test_random_keys_and_wrong_types(folder: Path, data: dict[str, object]) -> None:
    """Manifests with random keys and values of every type never crash the pipeline."""
    run_pipeline(folder / "m.yaml", yaml.safe_dump(data, allow_unicode=True))


@settings(FUZZ, max_examples=250)
@given(
    bom=BOMS,
    body=st.binary(max_size=200)
    | st.text(max_size=200).map(lambda t: t.encode("utf-8", "replace")),
    suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".xlsx", ".parquet", ".yaml"]),
)
def test_random_bytes_as_files(folder: Path, bom: bytes, body: bytes, suffix: str) -> None:
    """Random bytes (with or without a BOM) as a manifest or a rows file end in ManifestError."""
    path = folder / f"junk{suffix}"
    path.write_bytes(bom + body)
    if suffix == ".yaml":
        run_pipeline(path)
        return
    try:
        load_rows(RowsSource(path=path))
    except ManifestError as exc:
        assert exc.path == str(path)


CSV_TOKENS = [
    *',";\t\r\n {}x',
    "é",
    "\u2028",
    "\x00",
    "sku",
    "https://media.flora.ai/a.png",
    "\nA1,Mug,https://media.flora.ai/a.png,red\n",
]
csv_text = st.lists(st.sampled_from(CSV_TOKENS), max_size=80).map("".join)


@settings(FUZZ, max_examples=250)
@given(
    header=st.sampled_from(["sku,title,image_url,colour\n", "sku;image_url\n", "", "a,a\n"]),
    body=csv_text,
    bom=st.sampled_from(["", "\ufeff"]),
)
def test_random_csv_under_a_good_manifest(folder: Path, header: str, body: str, bom: str) -> None:
    """A good manifest over CSV junk gives jobs and row errors, never another exception."""
    (folder / "junk.csv").write_text(bom + header + body, encoding="utf-8")
    text = MANIFEST.replace("rows: products.csv", "rows: junk.csv")
    run_pipeline(folder / "m.yaml", text)

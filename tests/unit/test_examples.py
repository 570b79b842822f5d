"""The example manifests and the examples in docs/manifest.md load and plan cleanly."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from unit_support import CATALOG

from flora_batch.manifest import build_jobs, load_manifest
from flora_batch.manifest.rows import load_rows
from flora_batch.plan import make_plan
from flora_batch.types import Technique
from flora_batch.wire import parse_technique

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests").glob("*.yaml"))
EMULATOR_CATALOG = ROOT / "flora_batch" / "emulator" / "catalog.json"


def emulator_catalog() -> dict[str, Technique]:
    """The emulator's techniques, parsed the way the client parses FLORA's answers."""
    if not EMULATOR_CATALOG.exists():
        pytest.skip("the emulator catalog is not there")
    data = json.loads(EMULATOR_CATALOG.read_text(encoding="utf-8"))
    return {t["slug"]: parse_technique(t, t["slug"]) for t in data["techniques"]}


def plan_of(path: Path, catalog: dict[str, Technique]) -> tuple[int, float]:
    """Jobs and estimated cost of a manifest; asserts that it has no problems at all."""
    m = load_manifest(path)
    columns, rows = load_rows(m.rows, m.path)
    specs, errors = build_jobs(m, columns, rows, catalog)
    assert [str(e) for e in errors] == []
    plan = make_plan(specs, {}, catalog)
    if m.max_cost is not None:
        assert plan.total_cost <= m.max_cost
    return len(specs), plan.total_cost


def test_there_are_examples() -> None:
    """The four example manifests are present."""
    names = {p.name for p in EXAMPLES}
    assert {"demo.yaml", "spring-catalog.yaml", "two-techniques.yaml", "palette.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_plans_against_the_test_catalog(path: Path) -> None:
    """Each example gives jobs and no problem against the test catalog."""
    count, _ = plan_of(path, CATALOG)
    assert count > 0


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_plans_against_the_emulator(path: Path) -> None:
    """Each example's input ids match the emulator's technique schemas."""
    count, _ = plan_of(path, emulator_catalog())
    assert count > 0


def test_demo_is_six_rows_under_its_cap() -> None:
    """The demo runs six products through studio-shot within its max_cost."""
    assert plan_of(ROOT / "manifests" / "demo.yaml", CATALOG) == (6, 0.36)


def doc_examples() -> list[str]:
    """The complete manifests (YAML blocks with a name) in docs/manifest.md."""
    text = (ROOT / "docs" / "manifest.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    return [b for b in blocks if re.search(r"^name:", b, flags=re.M)]


@pytest.mark.parametrize("text", doc_examples())
def test_doc_examples_plan(tmp_path: Path, text: str) -> None:
    """The manifests shown in the reference load and plan next to the example CSVs."""
    for csv in (ROOT / "manifests").glob("*.csv"):
        shutil.copy(csv, tmp_path / csv.name)
    path = tmp_path / "doc.yaml"
    path.write_text(text, encoding="utf-8")
    count, _ = plan_of(path, CATALOG)
    assert count > 0

"""Fixtures for the pure-module tests: a technique catalog, files on disk, loaded manifests."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from unit_support import CATALOG, MANIFEST, PRODUCTS_CSV, located

from flora_batch.errors import ManifestProblems
from flora_batch.manifest import Manifest, build_jobs, load_manifest
from flora_batch.manifest.rows import load_rows
from flora_batch.types import JobSpec, Technique


@pytest.fixture
def catalog() -> dict[str, Technique]:
    """The test technique catalog, by slug."""
    return dict(CATALOG)


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str | bytes], Path]:
    """Write a file under tmp_path (text is dedented) and return its path."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def load_problems(
    tmp_path: Path, write: Callable[[str, str | bytes], Path]
) -> Callable[[str], list[str]]:
    """Load a manifest text (beside products.csv) and return its located problems."""

    def _load(text: str) -> list[str]:
        write("products.csv", PRODUCTS_CSV)
        path = write("m.yaml", text)
        with pytest.raises(ManifestProblems) as info:
            load_manifest(path)
        return located(info.value.problems, tmp_path)

    return _load


@pytest.fixture
def jobs_for(
    tmp_path: Path, write: Callable[[str, str | bytes], Path]
) -> Callable[..., tuple[Manifest, list[JobSpec], list[str]]]:
    """Load a manifest and rows, build the jobs, and return (manifest, specs, located errors)."""

    def _jobs(
        text: str = MANIFEST, csv: str = PRODUCTS_CSV, **kwargs: object
    ) -> tuple[Manifest, list[JobSpec], list[str]]:
        write("products.csv", csv)
        m = load_manifest(write("m.yaml", text))
        columns, rows = load_rows(m.rows, m.path)
        specs, errors = build_jobs(m, columns, rows, CATALOG, **kwargs)  # type: ignore[arg-type]
        return m, specs, located(errors, tmp_path)

    return _jobs

"""Fixtures for the ledger tests: factories, run on SQLite and (when configured) PostgreSQL.

``ledger_url`` is parametrized: every test that uses it runs once on a SQLite file in
``tmp_path`` and once on PostgreSQL, in a schema of its own that is dropped afterwards
(so parallel pytest-xdist workers never see each other's rows).  The PostgreSQL runs
need ``FLORA_BATCH_TEST_PG_URL``, e.g. ``postgresql://postgres@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ledger_support import QUOTES, JobFactory, Opener, drive, pg_schema

from flora_batch.ledger import Ledger
from flora_batch.types import JobKey, JobSpec, JobState, RunInput


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a test's ledger lives: a SQLite file, or a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "ledgers" / "batch.ledger")
    else:
        with pg_schema() as url:
            yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A private PostgreSQL schema only (for PostgreSQL-specific tests)."""
    with pg_schema() as url:
        yield url


@pytest.fixture
def open_ledger(ledger_url: str) -> Iterator[Opener]:
    """Factory: open (another) Ledger on the test's database; all are closed afterwards."""
    opened: list[Ledger] = []

    def make(**kwargs: Any) -> Ledger:
        ledger = Ledger.open(ledger_url, **kwargs)
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(open_ledger: Opener) -> Ledger:
    """A freshly migrated, empty ledger."""
    return open_ledger()


@pytest.fixture
def job_factory() -> JobFactory:
    """Factory: a ``(key, spec)`` pair, unique per call unless told otherwise."""
    counter = itertools.count()

    def make(
        *,
        batch: str = "batch-1",
        technique: str = "tech-a",
        row_index: int | None = None,
        key: str | None = None,
        **kwargs: Any,
    ) -> tuple[JobKey, JobSpec]:
        n = next(counter)
        spec = JobSpec(
            batch=batch,
            technique=technique,
            inputs=(RunInput("prompt", "text", f"a cat, take {n}"),),
            row_index=n if row_index is None else row_index,
            row={"prompt": f"a cat, take {n}", "note": "ünïcode ✓"},
            source=f"rows.csv:{n + 2}",
            **kwargs,
        )
        return JobKey(key or f"fk1:{n:032x}"), spec

    return make


@pytest.fixture
def job_in(ledger: Ledger, job_factory: JobFactory) -> Callable[..., JobKey]:
    """Factory: a job recorded in ``ledger`` and driven to the given state."""

    def make(state: JobState = JobState.PLANNED, **kwargs: Any) -> JobKey:
        key, spec = job_factory(**kwargs)
        ledger.record_planned([(key, spec)], quoted_cost=QUOTES, now=1.0)
        drive(ledger, key, state)
        return key

    return make

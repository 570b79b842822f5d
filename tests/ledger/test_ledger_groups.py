"""Grouped commits (``Session.group_commits``): transitions share one durable commit.

What must hold: nothing of a group is visible to another connection (nor on disk) before
its commit; the commit is a ``synchronous=FULL`` one; a ``mark_submitting`` that joined a
group is announced (``on_commit``) only after that commit; a refused transition is undone
alone; a write on another connection commits the group first instead of waiting on it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from ledger_support import QUOTES, JobFactory

from flora_batch.errors import LedgerConflict
from flora_batch.ledger import Ledger
from flora_batch.types import JobKey, JobState, UploadRecord, UploadState


class Later:
    """A stand-in for ``loop.call_later`` that runs the callback when the test says."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> None:
        self.calls.append((delay, callback))

    def run(self) -> None:
        """Run what is due (every callback so far)."""
        calls, self.calls = self.calls, []
        for _, callback in calls:
            callback()


def committed_state(path: Path, key: JobKey) -> str:
    """The job's state as another connection sees it: what is committed."""
    with sqlite3.connect(path) as other:
        (state,) = other.execute("SELECT state FROM jobs WHERE key = ?", (key,)).fetchone()
    return str(state)


def planned(ledger: Ledger, job_factory: JobFactory, n: int) -> list[JobKey]:
    jobs = [job_factory() for _ in range(n)]
    ledger.record_planned(jobs, quoted_cost=QUOTES, now=1.0)
    return [key for key, _ in jobs]


def test_a_group_is_invisible_until_its_one_full_commit(
    tmp_path: Path, job_factory: JobFactory
) -> None:
    """Three jobs' transitions: one BEGIN, no COMMIT until the scheduled callback, then one
    COMMIT at synchronous=FULL; another connection sees nothing of it before."""
    path = tmp_path / "x.ledger"
    later = Later()
    with Ledger.open(path) as ledger:
        keys = planned(ledger, job_factory, 3)
        ledger.group_commits(later, window=0.02)
        ledger.get(keys[0])  # opens the kept connection, to trace it
        statements: list[str] = []
        ledger._kept.driver_connection.set_trace_callback(statements.append)
        for n, key in enumerate(keys):
            ledger.mark_submitting(key, now=2.0, grouped=True)
            ledger.mark_running(key, f"run_{n}", now=3.0)
        assert ledger.get(keys[2]).state is JobState.RUNNING  # this connection sees it
        assert [committed_state(path, k) for k in keys] == ["planned"] * 3
        assert [delay for delay, _ in later.calls] == [0.02]  # one commit scheduled
        assert statements.count("BEGIN IMMEDIATE") == 1 and "COMMIT" not in statements
        assert statements.index("PRAGMA synchronous=FULL") < statements.index("BEGIN IMMEDIATE")
        later.run()
        assert statements.count("COMMIT") == 1
        assert statements[-1] == "PRAGMA synchronous=NORMAL"
        assert [committed_state(path, k) for k in keys] == ["running"] * 3


def test_a_submitting_is_announced_only_once_committed(
    tmp_path: Path, job_factory: JobFactory
) -> None:
    """``on_commit`` waits for the group's commit; with no group open it answers at once."""
    path = tmp_path / "x.ledger"
    later = Later()
    heard: list[object] = []
    with Ledger.open(path) as ledger:
        (key,) = planned(ledger, job_factory, 1)
        ledger.on_commit(heard.append)
        assert heard == [None]  # nothing open: at once
        ledger.group_commits(later)
        ledger.mark_submitting(key, now=2.0, grouped=True)
        ledger.on_commit(heard.append)
        assert heard == [None] and committed_state(path, key) == "planned"
        later.run()
        assert heard == [None, None]
        assert committed_state(path, key) == "submitting"


def test_mark_submitting_not_grouped_commits_at_once(
    tmp_path: Path, job_factory: JobFactory
) -> None:
    """Without ``grouped=True`` the submitting commit is durable before the call returns,
    and it takes the open group with it."""
    path = tmp_path / "x.ledger"
    later = Later()
    with Ledger.open(path) as ledger:
        first, second = planned(ledger, job_factory, 2)
        ledger.group_commits(later)
        ledger.mark_submitting(first, now=2.0, grouped=True)
        ledger.mark_submitting(second, now=2.0)
        assert committed_state(path, first) == committed_state(path, second) == "submitting"


def test_a_refused_transition_is_undone_alone(tmp_path: Path, job_factory: JobFactory) -> None:
    """A conflict inside a group rolls back that transition only; the group commits the rest."""
    path = tmp_path / "x.ledger"
    later = Later()
    with Ledger.open(path) as ledger:
        good, bad = planned(ledger, job_factory, 2)
        ledger.group_commits(later)
        ledger.mark_submitting(good, now=2.0, grouped=True)
        with pytest.raises(LedgerConflict):
            ledger.mark_running(bad, "run_x", now=3.0)  # still planned: refused
        ledger.mark_running(good, "run_1", now=3.0)
        later.run()
        assert committed_state(path, good) == "running"
        assert committed_state(path, bad) == "planned"
        assert [e["to_state"] for e in ledger.events(bad)] == ["planned"]


def test_another_connection_commits_the_group_first(
    tmp_path: Path, job_factory: JobFactory
) -> None:
    """A write through SQLAlchemy (the upload stage) while a group is open: no wait on the
    group's lock (it would be our own), the group is committed first."""
    path = tmp_path / "x.ledger"
    later = Later()
    record = UploadRecord("0f" * 32, "/a.png", "a.png", "ws_a", UploadState.PLANNED, "key_1")
    with Ledger.open(path) as ledger:
        (key,) = planned(ledger, job_factory, 1)
        ledger.group_commits(later)
        ledger.mark_submitting(key, now=2.0, grouped=True)
        ledger.record_uploads([record])
        assert committed_state(path, key) == "submitting"
        later.run()  # the scheduled commit finds nothing left to do


def test_closing_commits_an_open_group(tmp_path: Path, job_factory: JobFactory) -> None:
    """``close`` (and ``group_commits(None)``) commit what is open."""
    path = tmp_path / "x.ledger"
    with Ledger.open(path) as ledger:
        (key,) = planned(ledger, job_factory, 1)
        ledger.group_commits(Later())
        ledger.mark_submitting(key, now=2.0, grouped=True)
    assert committed_state(path, key) == "submitting"

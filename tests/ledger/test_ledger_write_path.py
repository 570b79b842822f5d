"""The transitions' write path: ``save_output``, the guards and fences, SQLite durability."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ledger_support import OUTPUTS, QUOTES, JobFactory, drive
from sqlalchemy import event, update

from flora_batch.errors import LeaseLost, LedgerConflict
from flora_batch.ledger import Ledger
from flora_batch.ledger.tables import jobs
from flora_batch.types import JobKey, JobState, RunOutput, UploadRecord, UploadState

S = JobState
JobIn = Callable[..., JobKey]
SHA = "cd" * 32


def save(ledger: Ledger, key: JobKey, output_id: str, *, now: float = 7.0) -> Any:
    """``save_output`` with a plausible file."""
    return ledger.save_output(
        key, output_id, path=f"out/{output_id}", size=3, sha256=SHA,
        content_type="image/png", now=now,
    )  # fmt: skip


def downloading(ledger: Ledger, job_in: JobIn, outputs: tuple[RunOutput, ...] = OUTPUTS) -> JobKey:
    """A job whose run completed with ``outputs``, none saved yet."""
    key = job_in(S.RUNNING)
    ledger.mark_downloading(key, outputs, now=5.0)
    return key


def assert_unchanged(ledger: Ledger, key: JobKey, call: Callable[[], Any]) -> LedgerConflict:
    """``call`` raises LedgerConflict for ``key`` and changes neither the job nor the log."""
    before, log = ledger.get(key), ledger.events()
    with pytest.raises(LedgerConflict) as info:
        call()
    assert ledger.get(key) == before
    assert ledger.events() == log
    return info.value


def set_columns(ledger: Ledger, key: JobKey, **values: Any) -> None:
    """Change a job's columns behind the API (what another worker or a crash left)."""
    with ledger._write() as conn:
        conn.execute(update(jobs).where(jobs.c.key == key).values(**values))


# -- save_output -----------------------------------------------------------------------


def test_save_output_of_the_last_output_finishes_the_job(ledger: Ledger, job_in: JobIn) -> None:
    """One output: the file is recorded and the job is done, with mark_done's event."""
    key = downloading(ledger, job_in, OUTPUTS[:1])
    log = ledger.events(key)
    rec = save(ledger, key, "output_1", now=9.0)
    assert rec == ledger.get(key)
    assert (rec.state, rec.completed_at, rec.updated_at) == (S.DONE, 9.0, 9.0)
    out = rec.outputs[0]
    assert (out.path, out.size, out.sha256, out.content_type) == (
        "out/output_1", 3, SHA, "image/png",
    )  # fmt: skip
    new = ledger.events(key)[len(log) :]
    assert [(e["from_state"], e["to_state"], e["at"]) for e in new] == [
        ("downloading", "done", 9.0)
    ]
    assert new[0]["detail"]["action"] == "mark_done"


def test_save_output_waits_for_every_output(ledger: Ledger, job_in: JobIn) -> None:
    """With an output still unsaved the job stays downloading and nothing is logged."""
    key = downloading(ledger, job_in)
    log = ledger.events(key)
    rec = save(ledger, key, "output_2")
    assert rec == ledger.get(key)
    assert rec.state == S.DOWNLOADING
    assert [o.sha256 for o in rec.outputs] == [None, SHA]
    assert ledger.events(key) == log
    rec = save(ledger, key, "output_1", now=8.0)
    assert (rec.state, rec.completed_at) == (S.DONE, 8.0)
    assert rec == ledger.get(key)


def test_save_output_again_replaces_the_file(ledger: Ledger, job_in: JobIn) -> None:
    """Saving an output twice keeps the latest file."""
    key = downloading(ledger, job_in)
    save(ledger, key, "output_1")
    rec = ledger.save_output(key, "output_1", path="b", size=9, sha256="ef" * 32, now=8.0)
    assert (rec.outputs[0].path, rec.outputs[0].size, rec.outputs[0].content_type) == ("b", 9, None)
    assert rec.state == S.DOWNLOADING


@pytest.mark.parametrize("state", [S.PLANNED, S.RUNNING, S.DONE, S.FAILED])
def test_save_output_only_while_downloading(ledger: Ledger, job_in: JobIn, state: S) -> None:
    """Outside downloading, save_output raises LedgerConflict naming the state."""
    key = job_in(state)
    error = assert_unchanged(ledger, key, lambda: save(ledger, key, "output_1"))
    assert f"cannot save_output: it is {state.value}, expected downloading" in str(error)


def test_save_output_of_unknown_output_or_job(ledger: Ledger, job_in: JobIn) -> None:
    """An output the run did not report, or a job not in the ledger: LedgerConflict."""
    key = downloading(ledger, job_in)
    error = assert_unchanged(ledger, key, lambda: save(ledger, key, "output_9"))
    assert "output_9" in str(error)
    with pytest.raises(LedgerConflict, match="no such job"):
        save(ledger, JobKey("fk1:ghost"), "output_1")


# -- the guards ------------------------------------------------------------------------


def test_conflict_names_expected_and_actual_states(ledger: Ledger, job_in: JobIn) -> None:
    """A refused move says what the job is and what the move needed."""
    key = job_in()
    error = assert_unchanged(ledger, key, lambda: ledger.mark_downloading(key, OUTPUTS, now=1))
    assert str(error) == f"job {key}: cannot mark_downloading: it is planned, expected running"
    error = assert_unchanged(ledger, key, lambda: ledger.mark_running(key, "run_1", now=1))
    assert "it is planned, expected submitting or needs_reconcile or unresolved" in str(error)
    assert error.key == key


def test_a_job_with_a_run_is_never_sent_again(ledger: Ledger, job_in: JobIn) -> None:
    """mark_submitting's guard refuses a planned job that somehow has a run id."""
    key = job_in()
    set_columns(ledger, key, run_id="run_9")
    error = assert_unchanged(ledger, key, lambda: ledger.mark_submitting(key, now=1.0))
    assert str(error) == f"job {key}: cannot mark_submitting: it already has run run_9"


@pytest.mark.parametrize("action", ["release_unsent", "mark_needs_reconcile"])
def test_a_no_run_move_refused_by_its_guard_names_the_run(
    ledger: Ledger, job_in: JobIn, action: str
) -> None:
    """Refused by the UPDATE's ``run_id IS NULL`` alone, the message names the run, not
    the state (it was "it is submitting, expected submitting")."""
    key = job_in(S.SUBMITTING)
    set_columns(ledger, key, run_id="run_9")
    move = {
        "release_unsent": lambda: ledger.release_unsent(key, now=2.0, reason="x"),
        "mark_needs_reconcile": lambda: ledger.mark_needs_reconcile(key, now=2.0, reason="x"),
    }[action]
    error = assert_unchanged(ledger, key, move)
    assert str(error) == f"job {key}: cannot {action}: it already has run run_9"


def test_a_refused_move_rolls_back_its_update(ledger: Ledger, job_in: JobIn) -> None:
    """mark_done with an unsaved output undoes its UPDATE and event (one transaction)."""
    key = downloading(ledger, job_in)
    save(ledger, key, "output_1")
    error = assert_unchanged(ledger, key, lambda: ledger.mark_done(key, now=9.0))
    assert "output_2" in str(error)


def test_worker_ledger_refuses_a_job_it_does_not_hold(ledger: Ledger, job_in: JobIn) -> None:
    """With worker_id set, every transition of another's (or nobody's) job is LeaseLost."""
    key = job_in()
    ledger.worker_id = "w1"
    with pytest.raises(LeaseLost, match="no worker holds it, not w1"):
        ledger.mark_submitting(key, now=1.0)
    set_columns(ledger, key, worker_id="w2")
    with pytest.raises(LeaseLost, match="w2 holds it, not w1"):
        ledger.mark_submitting(key, now=1.0)
    with pytest.raises(LeaseLost, match="w2 holds it"):
        ledger.mark_failed(key, code="x", message="y", category="input", now=1.0)
    ledger.worker_id = None
    assert ledger.get(key).state == S.PLANNED


def test_worker_ledger_moves_its_own_job_and_signs_events(ledger: Ledger, job_in: JobIn) -> None:
    """A held job moves all the way through save_output; each event names the worker."""
    key = job_in()
    set_columns(ledger, key, worker_id="w1")
    ledger.worker_id = "w1"
    log = ledger.events(key)
    ledger.mark_submitting(key, now=1.0)
    ledger.mark_running(key, "run_1", now=2.0)
    ledger.mark_downloading(key, OUTPUTS[:1], now=3.0)
    rec = save(ledger, key, "output_1", now=4.0)
    assert rec.state == S.DONE
    new = ledger.events(key)[len(log) :]
    assert [e["detail"]["worker"] for e in new] == ["w1"] * 4


def test_lost_lease_wins_over_a_wrong_state(ledger: Ledger, job_in: JobIn) -> None:
    """Another worker's job in the wrong state still reports LeaseLost, as before."""
    key = job_in()
    set_columns(ledger, key, worker_id="w2")
    ledger.worker_id = "w1"
    with pytest.raises(LeaseLost):
        ledger.mark_downloading(key, OUTPUTS, now=1.0)
    with pytest.raises(LeaseLost):
        save(ledger, key, "output_1")


# -- SQLite specifics ------------------------------------------------------------------


def traced(ledger: Ledger) -> list[str]:
    """The SQL the ledger's kept SQLite connection runs from now on (SQLite's own trace)."""
    with ledger._tx(write=False):
        pass  # makes the connection _tx keeps
    statements: list[str] = []
    ledger._kept.driver_connection.set_trace_callback(statements.append)
    return statements


def test_only_mark_submitting_commits_with_a_full_sync(
    tmp_path: Path, job_factory: JobFactory
) -> None:
    """The commit before a paid create is fsynced (FULL); the others run NORMAL."""
    with Ledger.open(tmp_path / "x.ledger") as ledger:
        key, spec = job_factory()
        ledger.record_planned([(key, spec)], quoted_cost=QUOTES, now=1.0)
        statements = traced(ledger)
        ledger.mark_submitting(key, now=2.0)
        assert statements[0] == "PRAGMA synchronous=FULL"
        assert statements[1] == "BEGIN IMMEDIATE"
        assert statements[-2:] == ["COMMIT", "PRAGMA synchronous=NORMAL"]
        statements.clear()
        ledger.mark_running(key, "run_1", now=3.0)
        assert statements[0] == "BEGIN IMMEDIATE"
        assert not any("synchronous" in s for s in statements)
        with ledger._write() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_begin_upload_commits_with_a_full_sync(tmp_path: Path) -> None:
    """The commit before an asset create leaves is fsynced too; the upload's others are not."""
    sha = "0f" * 32
    record = UploadRecord(sha, "/a.png", "a.png", "ws_a", UploadState.PLANNED, "key_1")
    with Ledger.open(tmp_path / "x.ledger") as ledger:
        ledger.record_uploads([record])
        statements: list[str] = []

        def trace(dbapi_connection: Any, *_: Any) -> None:
            dbapi_connection.set_trace_callback(statements.append)

        event.listen(ledger._engine, "checkout", trace)
        ledger.begin_upload(sha, via="direct", now=2.0)
        assert statements[0] == "PRAGMA synchronous=FULL"
        assert statements[1] == "BEGIN IMMEDIATE"
        assert statements[-2:] == ["COMMIT", "PRAGMA synchronous=NORMAL"]
        statements.clear()
        ledger.set_upload_step(sha, "reserved", now=3.0)
        assert statements[0] == "BEGIN IMMEDIATE"
        assert not any("synchronous" in s for s in statements)
        with ledger._write() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_a_ledger_works_from_another_thread(tmp_path: Path, job_factory: JobFactory) -> None:
    """Threads other than the opener's use pooled connections, not the kept one."""
    with Ledger.open(tmp_path / "x.ledger") as ledger:
        key, spec = job_factory()
        ledger.record_planned([(key, spec)], quoted_cost=QUOTES, now=1.0)
        ledger.mark_submitting(key, now=2.0)
        got: list[Any] = []
        thread = threading.Thread(target=lambda: got.append(ledger.mark_running(key, "r", now=3)))
        thread.start()
        thread.join()
        assert got[0] == ledger.get(key)
        assert ledger.mark_downloading(key, OUTPUTS[:1], now=4.0).state == S.DOWNLOADING


def test_reopened_ledger_sees_every_commit(tmp_path: Path, job_factory: JobFactory) -> None:
    """Closing gives the kept connection back; a new ledger reads what the old one wrote."""
    path = tmp_path / "x.ledger"
    with Ledger.open(path) as ledger:
        key, spec = job_factory()
        ledger.record_planned([(key, spec)], quoted_cost=QUOTES, now=1.0)
        drive(ledger, key, S.DONE)
        before = ledger.get(key)
    with Ledger.open(path) as again:
        assert again.get(key) == before


def test_a_sqlite_too_old_for_returning_is_a_clear_error() -> None:
    """SQLite before 3.35 has no RETURNING: refused up front, with what to do instead."""
    from flora_batch.errors import LedgerError
    from flora_batch.ledger import connect

    connect.check_sqlite_version((3, 35, 0))
    expected = r"SQLite is 3\.34\.1; the ledger needs 3\.35\.0.*postgresql"
    with pytest.raises(LedgerError, match=expected):
        connect.check_sqlite_version((3, 34, 1))

"""``Ledger.jobs`` and ``known_slots`` read on the driver's cursor: the same records as ``get``.

The listing skips SQLAlchemy's rows (``tx.py``); each record it builds must equal the
one a transition or ``get`` builds from the same row, whatever the state, batch and
filter, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from sqlalchemy import update

from flora_batch.errors import LedgerError
from flora_batch.ledger import Ledger
from flora_batch.ledger.tables import jobs
from flora_batch.types import JobKey, JobState

JobIn = Callable[..., JobKey]
S = JobState


def test_listed_records_equal_get(ledger: Ledger, job_in: JobIn) -> None:
    """Every state, outputs and error columns included: jobs() gives what get() gives."""
    keys = [job_in(state) for state in JobState]
    other = job_in(S.DONE, batch="other")
    listed = {j.key: j for j in ledger.jobs("batch-1")}
    assert set(listed) == set(keys)
    for key in keys:
        assert listed[key] == ledger.get(key)
    assert {j.key: j for j in ledger.jobs()}[other] == ledger.get(other)


def test_state_filters_scope_outputs(ledger: Ledger, job_in: JobIn) -> None:
    """A state filter (with or without a batch) keeps each listed job's own outputs."""
    done = job_in(S.DONE)
    job_in(S.DOWNLOADING)
    theirs = job_in(S.DONE, batch="other")
    got = ledger.jobs("batch-1", states=[S.DONE, S.FAILED])
    assert [j.key for j in got] == [done]
    assert got[0] == ledger.get(done)
    assert {j.key for j in ledger.jobs(states={S.DONE})} == {done, theirs}


def test_known_slots_match_the_records(ledger: Ledger, job_in: JobIn) -> None:
    """known_slots is each job's (state, technique, row id, row index), batch by batch."""
    keys = [job_in(S.RUNNING, row_id="r1"), job_in(S.PLANNED, technique="tech-b")]
    job_in(S.DONE, batch="other")
    slots = ledger.known_slots("batch-1")
    assert set(slots) == set(keys)
    for key in keys:
        rec = ledger.get(key)
        assert slots[key] == (rec.state, rec.technique, rec.row_id, rec.row_index)


@pytest.mark.parametrize(
    "inputs",
    [
        '[{"id":"prompt","type":"text","value":"a cat","extra":1}]',  # was dropped by jobs()
        '[{"id":"prompt","type":"text"}]',  # was a KeyError in jobs(), a TypeError in get()
        '{"id":"prompt"}',
        "not json",
    ],
)
def test_unreadable_inputs_are_one_ledger_error(ledger: Ledger, job_in: JobIn, inputs: str) -> None:
    """get(), a transition and jobs() read ``inputs`` alike: LedgerError naming the job."""
    key = job_in(S.SUBMITTING)
    with ledger._write() as conn:
        conn.execute(update(jobs).where(jobs.c.key == key).values(inputs=inputs))
    expected = f"job {key}: the ledger's inputs cannot be read"
    for read in (
        lambda: ledger.get(key),
        lambda: ledger.jobs("batch-1"),
        lambda: ledger.mark_running(key, "run_1", now=5.0),
    ):
        with pytest.raises(LedgerError, match=re.escape(expected)):
            read()

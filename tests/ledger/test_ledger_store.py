"""The ledger's API on SQLite and PostgreSQL: planning, queries, every transition, money."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy
from ledger_support import OUTPUTS, QUOTES, JobFactory, Opener

from flora_batch.errors import LedgerConflict, LedgerError
from flora_batch.ledger import Ledger
from flora_batch.types import JobKey, JobRecord, JobState, OutputRecord, RunOutput, money

S = JobState
NOW = 500.0
JobIn = Callable[..., JobKey]

#: The legal moves, written out from the design independently of ``ledger/moves.py``.
LEGAL: dict[str, tuple[set[JobState], JobState]] = {
    "mark_submitting": ({S.PLANNED}, S.SUBMITTING),
    "release_unsent": ({S.SUBMITTING, S.NEEDS_RECONCILE}, S.PLANNED),
    "mark_running": ({S.SUBMITTING, S.NEEDS_RECONCILE, S.UNRESOLVED}, S.RUNNING),
    "mark_needs_reconcile": ({S.SUBMITTING}, S.NEEDS_RECONCILE),
    "mark_unresolved": ({S.SUBMITTING, S.NEEDS_RECONCILE}, S.UNRESOLVED),
    "resubmit_unresolved": ({S.UNRESOLVED}, S.PLANNED),
    "mark_downloading": ({S.RUNNING}, S.DOWNLOADING),
    "mark_done": ({S.DOWNLOADING}, S.DONE),
    "finish_run": ({S.RUNNING}, S.DONE),
    "reopen_download": ({S.DONE}, S.DOWNLOADING),
    "mark_failed": ({S.SUBMITTING, S.RUNNING, S.DOWNLOADING, S.NEEDS_RECONCILE}, S.FAILED),
    "retry_failed": ({S.FAILED}, S.PLANNED),
    "mark_lost": ({S.RUNNING, S.DOWNLOADING}, S.UNRESOLVED),
}

ACTIONS: dict[str, Callable[[Ledger, JobKey], JobRecord]] = {
    "mark_submitting": lambda led, k: led.mark_submitting(k, now=NOW),
    "release_unsent": lambda led, k: led.release_unsent(k, now=NOW, reason="429 answered"),
    "mark_running": lambda led, k: led.mark_running(k, "run_2", now=NOW),
    "mark_needs_reconcile": lambda led, k: led.mark_needs_reconcile(k, now=NOW, reason="409"),
    "mark_unresolved": lambda led, k: led.mark_unresolved(k, now=NOW, reason="not found"),
    "resubmit_unresolved": lambda led, k: led.resubmit_unresolved(k, now=NOW),
    "mark_downloading": lambda led, k: led.mark_downloading(k, OUTPUTS, now=NOW),
    "mark_done": lambda led, k: led.mark_done(k, now=NOW),
    "finish_run": lambda led, k: led.finish_run(
        k, OUTPUTS[0], path="out/1.png", size=3, sha256="cd" * 32, now=NOW
    ),
    "reopen_download": lambda led, k: led.reopen_download(k, now=NOW),
    "mark_failed": lambda led, k: led.mark_failed(
        k, code="provider_error", message="boom", category="retryable", now=NOW
    ),
    "retry_failed": lambda led, k: led.retry_failed(k, now=NOW),
    "mark_lost": lambda led, k: led.mark_lost(k, now=NOW, reason="404 on every poll"),
}

MATRIX = [(action, state) for action in LEGAL for state in JobState]


def saved(ledger: Ledger, key: JobKey, output_id: str, *, now: float = NOW) -> JobRecord:
    """Record an output file as saved (``save_output``: the last one finishes the job)."""
    return ledger.save_output(
        key, output_id, path=f"out/{output_id}", size=3, sha256="cd" * 32,
        content_type="image/png", now=now,
    )  # fmt: skip


def assert_unchanged(ledger: Ledger, key: JobKey, call: Callable[[], Any]) -> LedgerConflict:
    """``call`` raises LedgerConflict for ``key`` and changes neither the job nor the log."""
    before, log = ledger.get(key), ledger.events()
    with pytest.raises(LedgerConflict) as info:
        call()
    assert info.value.key == key
    assert ledger.get(key) == before
    assert ledger.events() == log
    return info.value


# -- opening and planning ------------------------------------------------------------


def test_open_twice_is_a_no_op_migration(open_ledger: Opener, job_in: JobIn) -> None:
    """Reopening a migrated ledger keeps its jobs."""
    key = job_in(S.RUNNING)
    assert open_ledger().get(key).state == S.RUNNING


def test_record_planned_inserts_new_jobs(ledger: Ledger, job_factory: JobFactory) -> None:
    """New keys become planned jobs with key, idempotency key and quote filled in."""
    jobs = [job_factory(), job_factory(technique="tech-b"), job_factory(technique="tech-x")]
    assert ledger.record_planned(jobs, quoted_cost=QUOTES, now=10.0) == 3
    (key, spec), (key_b, _), (key_x, _) = jobs
    rec = ledger.get(key)
    assert (rec.key, rec.idempotency_key, rec.state, rec.attempt) == (key, key, S.PLANNED, 1)
    assert (rec.batch, rec.technique, rec.row_index, rec.source) == (
        spec.batch, spec.technique, spec.row_index, spec.source,
    )  # fmt: skip
    assert rec.inputs == spec.inputs
    assert rec.row == spec.row
    assert list(rec.row) == list(spec.row), "cells keep their column order"
    assert rec.output_name == spec.output_name
    assert (rec.updated_at, rec.submitted_at, rec.run_id, rec.outputs) == (10.0, None, None, ())
    assert ledger.get(key_b).quoted_cost == 1.5
    assert ledger.get(key_x).quoted_cost is None


def test_record_planned_is_idempotent(ledger: Ledger, job_factory: JobFactory) -> None:
    """Recording the same keys again inserts nothing and leaves existing jobs alone."""
    jobs = [job_factory() for _ in range(3)]
    assert ledger.record_planned(jobs, quoted_cost=QUOTES, now=1.0) == 3
    ledger.mark_submitting(jobs[0][0], now=2.0)
    more = [*jobs, job_factory()]
    assert ledger.record_planned(more, quoted_cost={"tech-a": 9.0}, now=3.0) == 1
    first = ledger.get(jobs[0][0])
    assert (first.state, first.quoted_cost, first.updated_at) == (S.SUBMITTING, 0.25, 2.0)


def test_record_planned_counts_a_repeated_key_once(ledger: Ledger, job_factory: JobFactory) -> None:
    """A key listed twice in one call is inserted once, the first spec winning."""
    key, spec = job_factory(row_index=4)
    _, other = job_factory(row_index=9)
    assert ledger.record_planned([(key, spec), (key, other)], quoted_cost=QUOTES, now=1) == 1
    assert ledger.get(key).row_index == 4


def test_record_planned_logs_one_event_per_new_job(ledger: Ledger, job_factory: JobFactory) -> None:
    """Each planned job gets a creation event."""
    key, spec = job_factory()
    ledger.record_planned([(key, spec)], quoted_cost=QUOTES, now=7.0)
    [event] = ledger.events(key)
    assert (event["from_state"], event["to_state"], event["at"]) == (None, "planned", 7.0)
    assert event["detail"] == {"action": "record_planned"}


def test_record_planned_many_rows(ledger: Ledger, job_factory: JobFactory) -> None:
    """20,000 jobs are all recorded and all known (correctness only, not timing)."""
    jobs = [job_factory(technique="tech-b" if i % 2 else "tech-a") for i in range(20_000)]
    assert ledger.record_planned(jobs, quoted_cost=QUOTES, now=1.0) == 20_000
    known = ledger.known_slots("batch-1")
    assert {k: slot[0] for k, slot in known.items()} == {k: S.PLANNED for k, _ in jobs}
    assert ledger.record_planned(jobs, quoted_cost=QUOTES, now=2.0) == 0
    assert ledger.counts("batch-1")[S.PLANNED] == 20_000
    assert ledger.money() == (0.0, 0.0)


def test_known_slots_is_per_batch(ledger: Ledger, job_factory: JobFactory) -> None:
    """known_slots() lists only the batch asked for."""
    a, b = job_factory(batch="one"), job_factory(batch="two")
    ledger.record_planned([a, b], quoted_cost=QUOTES, now=1.0)
    ledger.mark_submitting(a[0], now=2.0)
    spec = a[1]
    assert ledger.known_slots("one") == {
        a[0]: (S.SUBMITTING, spec.technique, spec.row_id, spec.row_index)
    }
    assert ledger.known_slots("nope") == {}


def test_get_unknown_key_raises(ledger: Ledger) -> None:
    """Asking for a key that is not there raises LedgerConflict naming it."""
    with pytest.raises(LedgerConflict, match="no such job") as info:
        ledger.get(JobKey("fk1:missing"))
    assert info.value.key == "fk1:missing"


def test_jobs_are_ordered_and_filtered(ledger: Ledger, job_factory: JobFactory) -> None:
    """jobs() orders by row index then technique and filters by batch and state."""
    jobs = [
        job_factory(row_index=2, technique="tech-a"),
        job_factory(row_index=1, technique="tech-b"),
        job_factory(row_index=1, technique="tech-a"),
        job_factory(row_index=0, batch="other"),
    ]
    ledger.record_planned(jobs, quoted_cost=QUOTES, now=1.0)
    ledger.mark_submitting(jobs[0][0], now=2.0)
    got = [(j.row_index, j.technique) for j in ledger.jobs("batch-1")]
    assert got == [(1, "tech-a"), (1, "tech-b"), (2, "tech-a")]
    assert [j.key for j in ledger.jobs(states=[S.SUBMITTING])] == [jobs[0][0]]
    assert len(ledger.jobs()) == 4
    assert ledger.jobs("batch-1", states=[]) == []


def test_jobs_include_outputs(ledger: Ledger, job_in: JobIn) -> None:
    """jobs() fills in each job's outputs, like get()."""
    key = job_in(S.DONE)
    job_in(S.PLANNED)
    by_key = {j.key: j for j in ledger.jobs()}
    assert by_key[key] == ledger.get(key)
    assert [o.output_id for o in by_key[key].outputs] == ["output_1", "output_2"]


def test_counts_include_every_state(ledger: Ledger, job_in: JobIn) -> None:
    """counts() has every state, zero where no job is."""
    job_in(S.RUNNING)
    job_in(S.RUNNING)
    job_in(S.FAILED, batch="other")
    counts = ledger.counts("batch-1")
    assert set(counts) == set(JobState)
    assert counts[S.RUNNING] == 2
    assert sum(counts.values()) == 2
    assert ledger.counts()[S.FAILED] == 1


# -- the transition matrix -------------------------------------------------------------


@pytest.mark.parametrize(("action", "state"), MATRIX, ids=[f"{a}-from-{s}" for a, s in MATRIX])
def test_transition(ledger: Ledger, job_in: JobIn, action: str, state: JobState) -> None:
    """Each move applies from its source states (logging one event) and nowhere else."""
    key = job_in(state)
    sources, target = LEGAL[action]
    if state not in sources:
        error = assert_unchanged(ledger, key, lambda: ACTIONS[action](ledger, key))
        assert state.value in str(error) or "already has run" in str(error)
        return
    log = ledger.events(key)
    record = ACTIONS[action](ledger, key)
    assert record == ledger.get(key)
    assert (record.state, record.updated_at) == (target, NOW)
    new = ledger.events(key)[len(log) :]
    assert [(e["from_state"], e["to_state"], e["at"]) for e in new] == [
        (state.value, target.value, NOW)
    ]
    assert new[0]["detail"]["action"] == action


@pytest.mark.parametrize("action", sorted(LEGAL))
def test_transition_of_unknown_job(ledger: Ledger, action: str) -> None:
    """Moving a job that is not in the ledger raises LedgerConflict and logs nothing."""
    with pytest.raises(LedgerConflict, match="no such job"):
        ACTIONS[action](ledger, JobKey("fk1:ghost"))
    assert ledger.events() == []


# -- submitting ------------------------------------------------------------------------


def test_mark_submitting_sets_submitted_at(ledger: Ledger, job_in: JobIn) -> None:
    """The first send stamps submitted_at."""
    key = job_in()
    assert ledger.mark_submitting(key, now=42.0).submitted_at == 42.0


def test_resubmit_unresolved_starts_a_new_attempt_with_a_new_key(
    ledger: Ledger, job_in: JobIn
) -> None:
    """resubmit_unresolved never resends the key FLORA already holds: attempt 2, key -r2."""
    key = job_in(S.UNRESOLVED)  # submitted at 100.0
    ledger.resubmit_unresolved(key, now=200.0)
    rec = ledger.mark_submitting(key, now=300.0)
    assert (rec.submitted_at, rec.idempotency_key, rec.attempt) == (300.0, f"{key}-r2", 2)
    released = ledger.release_unsent(key, now=301.0, reason="429")
    assert released.submitted_at is None


def test_release_unsent_clears_first_send(ledger: Ledger, job_in: JobIn) -> None:
    """A first send that FLORA refused leaves no trace in submitted_at."""
    key = job_in(S.SUBMITTING)
    rec = ledger.release_unsent(key, now=101.0, reason="402 insufficient credits")
    assert (rec.state, rec.submitted_at) == (S.PLANNED, None)
    assert ledger.events(key)[-1]["detail"]["reason"] == "402 insufficient credits"
    assert ledger.mark_submitting(key, now=150.0).submitted_at == 150.0


def test_mark_running_records_run(ledger: Ledger, job_in: JobIn) -> None:
    """mark_running stores the run id, the quote-time charge and the request id."""
    key = job_in(S.SUBMITTING)
    rec = ledger.mark_running(key, "run_9", now=5.0, charged_cost=0.3, request_id="req-1")
    assert (rec.run_id, rec.charged_cost, rec.request_ids) == ("run_9", 0.3, ("req-1",))


def test_mark_running_again_with_same_run_is_a_no_op(ledger: Ledger, job_in: JobIn) -> None:
    """Hearing about the same run twice changes nothing and logs nothing."""
    key = job_in(S.RUNNING)
    before, log = ledger.get(key), ledger.events(key)
    assert ledger.mark_running(key, before.run_id or "", now=999.0) == before
    assert ledger.events(key) == log


def test_mark_running_with_another_run_raises(ledger: Ledger, job_in: JobIn) -> None:
    """A job never gets a second run id for the same key."""
    key = job_in(S.RUNNING)
    error = assert_unchanged(ledger, key, lambda: ledger.mark_running(key, "run_x", now=NOW))
    assert "run_1" in str(error)


def test_reconcile_then_unresolved_keeps_reason(ledger: Ledger, job_in: JobIn) -> None:
    """The reconcile and unresolved reasons are visible on the job and in the log."""
    key = job_in(S.SUBMITTING)
    rec = ledger.mark_needs_reconcile(key, now=1.0, reason="read timeout", request_id="req-7")
    assert (rec.error_message, rec.request_ids) == ("read timeout", ("req-7",))
    rec = ledger.mark_unresolved(key, now=2.0, reason="no matching run")
    assert rec.error_message == "no matching run"
    rec = ledger.mark_running(key, "run_found", now=3.0)
    assert (rec.error_message, rec.run_id) == (None, "run_found")


def test_note_request_appends_once(ledger: Ledger, job_in: JobIn) -> None:
    """Request ids are appended in order, without duplicates, with no state change."""
    key = job_in(S.SUBMITTING)
    for rid in ("a", "b", "a"):
        ledger.note_request(key, rid)
    rec = ledger.get(key)
    assert (rec.request_ids, rec.state) == (("a", "b"), S.SUBMITTING)
    with pytest.raises(LedgerConflict):
        ledger.note_request(JobKey("fk1:ghost"), "c")


# -- outputs ---------------------------------------------------------------------------


def test_mark_downloading_stores_outputs(ledger: Ledger, job_in: JobIn) -> None:
    """The run's outputs are stored, not yet saved."""
    key = job_in(S.RUNNING)
    rec = ledger.mark_downloading(key, OUTPUTS, now=1.0, charged_cost=0.9)
    assert [(o.output_id, o.type, o.url, o.sha256) for o in rec.outputs] == [
        ("output_1", "imageUrl", "https://media.example/1.png", None),
        ("output_2", "text", "a caption", None),
    ]
    assert rec.charged_cost == 0.9


def test_mark_done_needs_every_output_saved(ledger: Ledger, job_in: JobIn) -> None:
    """mark_done refuses while an output has no sha256, and names it."""
    key = job_in(S.RUNNING)
    ledger.mark_downloading(key, OUTPUTS, now=1.0)
    saved(ledger, key, "output_1")
    error = assert_unchanged(ledger, key, lambda: ledger.mark_done(key, now=2.0))
    assert "output_2" in str(error)
    saved(ledger, key, "output_2")  # done, then reopened: both files still saved
    ledger.reopen_download(key, now=2.5)
    rec = ledger.mark_done(key, now=3.0)
    assert (rec.state, rec.completed_at) == (S.DONE, 3.0)


def test_saved_output_keeps_its_file(ledger: Ledger, job_in: JobIn) -> None:
    """A saved output keeps path, size, hash and content type."""
    key = job_in(S.RUNNING)
    ledger.mark_downloading(key, OUTPUTS, now=1.0)
    ledger.save_output(
        key, "output_1", path="a/b.png", size=123, sha256="ef" * 32,
        content_type="image/png", now=2.0,
    )  # fmt: skip
    out = ledger.get(key).outputs[0]
    assert (out.path, out.size, out.sha256, out.content_type) == (
        "a/b.png", 123, "ef" * 32, "image/png",
    )  # fmt: skip


def test_save_output_checks_job_and_output(ledger: Ledger, job_in: JobIn) -> None:
    """Saving an unknown output, or outside downloading, raises LedgerConflict."""
    key = job_in(S.DOWNLOADING)
    assert_unchanged(ledger, key, lambda: saved(ledger, key, "output_9"))
    done = job_in(S.DONE)
    assert_unchanged(ledger, done, lambda: saved(ledger, done, "output_1"))


def test_finish_run_records_the_end_the_output_and_its_file_at_once(
    ledger: Ledger, job_in: JobIn
) -> None:
    """finish_run: a running job's one output and file, its bill, done; one event."""
    key = job_in(S.RUNNING)
    log = ledger.events(key)
    rec = ledger.finish_run(
        key, OUTPUTS[0], path="a/b.png", size=123, sha256="ef" * 32,
        content_type="image/png", now=NOW, charged_cost=0.3,
    )  # fmt: skip
    assert rec == ledger.get(key)
    assert (rec.state, rec.completed_at, rec.charged_cost) == (S.DONE, NOW, 0.3)
    assert rec.outputs == (
        OutputRecord("output_1", "imageUrl", OUTPUTS[0].url, "a/b.png", 123, "ef" * 32,
                     "image/png"),
    )  # fmt: skip
    [event] = ledger.events(key)[len(log) :]
    assert (event["from_state"], event["to_state"]) == ("running", "done")
    assert event["detail"] == {"action": "finish_run", "outputs": ["output_1"]}
    assert ledger.durations("tech-a") == [NOW - 100.0]  # submitted at 100 by job_in


def test_finish_run_without_a_bill_keeps_the_job_s(ledger: Ledger, job_in: JobIn) -> None:
    """An unknown bill changes nothing: the one mark_running recorded stays."""
    key = job_in(S.SUBMITTING)
    ledger.mark_running(key, "run_1", now=NOW, charged_cost=0.2)
    rec = ledger.finish_run(key, OUTPUTS[0], path="p", size=1, sha256="00", now=NOW)
    assert rec.charged_cost == 0.2


def test_refresh_output_urls_keeps_saved_files(ledger: Ledger, job_in: JobIn) -> None:
    """New URLs replace expired ones; saved file data stays; new ids are added."""
    key = job_in(S.DOWNLOADING)
    fresh = [RunOutput("output_1", "imageUrl", "https://media.example/1-new.png"),
             RunOutput("output_3", "imageUrl", "https://media.example/3.png")]  # fmt: skip
    rec = ledger.refresh_output_urls(key, fresh)
    assert rec == ledger.get(key)  # the job as it is afterwards
    outs = {o.output_id: o for o in rec.outputs}
    assert outs["output_1"].url.endswith("1-new.png")
    assert outs["output_1"].sha256 == "ab" * 32
    assert outs["output_2"].url == "a caption"
    assert outs["output_3"].sha256 is None


def test_clear_output_file_then_reopen(ledger: Ledger, job_in: JobIn) -> None:
    """A vanished file is forgotten, the job reopened, downloaded again and done again."""
    key = job_in(S.DONE)
    ledger.clear_output_file(key, "output_2")
    out = ledger.get(key).outputs[1]
    assert (out.path, out.size, out.sha256, out.content_type) == (None, None, None, None)
    rec = ledger.reopen_download(key, now=1.0)
    assert (rec.state, rec.completed_at) == (S.DOWNLOADING, None)
    with pytest.raises(LedgerConflict):
        ledger.mark_done(key, now=2.0)
    assert saved(ledger, key, "output_2", now=3.0).state == S.DONE
    with pytest.raises(LedgerConflict):
        ledger.clear_output_file(key, "output_9")


# -- failures, retries and money -------------------------------------------------------


def test_mark_failed_records_error(ledger: Ledger, job_in: JobIn) -> None:
    """The error code, message and category are kept with the failed job."""
    key = job_in(S.RUNNING)
    rec = ledger.mark_failed(
        key, code="model_timeout", message="took too long", category="retryable", now=9.0,
        charged_cost=0.0,
    )  # fmt: skip
    assert (rec.error_code, rec.error_message, rec.error_category) == (
        "model_timeout", "took too long", "retryable",
    )  # fmt: skip
    assert (rec.completed_at, rec.charged_cost, rec.run_id) == (9.0, 0.0, f"run_1{key[-6:]}")


def test_retry_failed_derives_a_new_key(ledger: Ledger, job_in: JobIn) -> None:
    """Each retry sends <key>-r<attempt> and starts the attempt blank."""
    key = job_in(S.RUNNING)
    ledger.mark_downloading(key, OUTPUTS, now=1.0)
    ledger.mark_failed(key, code="x", message="y", category="retryable", now=2.0)
    rec = ledger.retry_failed(key, now=3.0)
    assert (rec.state, rec.attempt, rec.idempotency_key) == (S.PLANNED, 2, f"{key}-r2")
    assert (rec.run_id, rec.error_code, rec.error_message, rec.error_category) == (None,) * 4
    assert (rec.submitted_at, rec.completed_at, rec.outputs, rec.request_ids) == (
        None, None, (), (),
    )  # fmt: skip
    drive_to_failed = ledger.mark_submitting(key, now=4.0)
    assert drive_to_failed.idempotency_key == f"{key}-r2"
    ledger.mark_failed(key, code="x", message="y", category="retryable", now=5.0)
    assert ledger.retry_failed(key, now=6.0).idempotency_key == f"{key}-r3"


def test_retry_failed_logs_the_old_attempt(ledger: Ledger, job_in: JobIn) -> None:
    """The burned key, run id, request ids and error of the old attempt are in the log."""
    key = job_in(S.SUBMITTING)
    ledger.mark_running(key, "run_old", now=1.0, request_id="req-1")
    ledger.mark_failed(key, code="GPU_PROVIDER_ERROR", message="m", category="retryable", now=2)
    ledger.retry_failed(key, now=3.0)
    detail = ledger.events(key)[-1]["detail"]
    assert detail["action"] == "retry_failed"
    assert detail["attempt"] == 2
    old = detail["old"]
    assert (old["run_id"], old["idempotency_key"], old["error_code"]) == (
        "run_old", key, "GPU_PROVIDER_ERROR",
    )  # fmt: skip
    assert old["request_ids"] == '["req-1"]'


def test_a_burned_key_is_never_given_to_another_job(
    ledger: Ledger, job_in: JobIn, job_factory: JobFactory
) -> None:
    """Planning a job whose key equals a live idempotency key is a LedgerConflict."""
    key = job_in(S.FAILED)
    ledger.retry_failed(key, now=1.0)
    _, spec = job_factory()
    with pytest.raises(LedgerConflict):
        ledger.record_planned([(JobKey(f"{key}-r2"), spec)], quoted_cost=QUOTES, now=2.0)
    assert {k: slot[0] for k, slot in ledger.known_slots("batch-1").items()} == {key: S.PLANNED}


def test_money_spent_and_reserved(ledger: Ledger, job_in: JobIn) -> None:
    """spent sums known bills; reserved holds, for every job that may have an unbilled
    run, the larger of its quote and the highest bill seen for its technique."""
    assert ledger.money() == (0.0, 0.0)
    job_in(S.PLANNED)  # nothing reserved
    job_in(S.SUBMITTING)  # 0.25 reserved
    running = job_in(S.RUNNING, technique="tech-b")  # 1.5 reserved
    job_in(S.NEEDS_RECONCILE)
    job_in(S.UNRESOLVED)
    job_in(S.DOWNLOADING)
    done = job_in(S.DONE)
    job_in(S.FAILED)  # failed before any run: nothing can be billed
    assert ledger.money() == (0.0, pytest.approx(0.25 * 5 + 1.5))
    ledger.set_charged(running, 2.0)
    ledger.set_charged(done, 0.5)  # a bill above the quote: the others may cost as much
    assert ledger.money() == (2.5, pytest.approx(0.5 * 4))
    assert ledger.highest_bills() == {"tech-a": 0.5, "tech-b": 2.0}
    assert ledger.money("other") == (0.0, 0.0)


def test_a_failed_run_stays_reserved_until_its_bill_is_read(ledger: Ledger, job_in: JobIn) -> None:
    """A failed run may be billed late (CONTRACT.md §4): reserved until its bill is known;
    a refunded failure (bill 0) does not tell what the technique costs."""
    key = job_in(S.RUNNING)
    ledger.mark_failed(key, code="provider_error", message="m", category="retryable", now=5.0)
    assert ledger.money() == (0.0, pytest.approx(0.25))
    ledger.set_charged(key, 0.0)
    assert ledger.money() == (0.0, 0.0)
    assert ledger.highest_bills() == {}


def test_a_run_belongs_to_one_job(ledger: Ledger, job_in: JobIn) -> None:
    """A run id another job has (or had, in an earlier attempt) is refused, nothing changed."""
    first, second = job_in(S.RUNNING), job_in(S.SUBMITTING)
    run_id = ledger.get(first).run_id or ""
    error = assert_unchanged(ledger, second, lambda: ledger.mark_running(second, run_id, now=9))
    assert f"it belongs to job {first}" in str(error)
    ledger.mark_failed(first, code="c", message="m", category="retryable", now=10.0)
    ledger.retry_failed(first, now=11.0)  # the old run goes to the event log ...
    assert_unchanged(ledger, second, lambda: ledger.mark_running(second, run_id, now=12))
    assert run_id in ledger.known_runs()  # ... and stays known


def test_money_keeps_bills_of_retried_attempts(ledger: Ledger, job_in: JobIn) -> None:
    """A failed attempt's bill stays spent after retry_failed; the new attempt adds to it."""
    key = job_in(S.RUNNING)
    ledger.mark_failed(key, code="c", message="m", category="retryable", now=1, charged_cost=0.4)
    assert ledger.money() == (pytest.approx(0.4), 0.0)
    rec = ledger.retry_failed(key, now=2.0)
    assert rec.charged_cost is None
    assert ledger.money() == (pytest.approx(0.4), 0.0)
    ledger.mark_submitting(key, now=3.0)
    assert ledger.money() == (pytest.approx(0.4), pytest.approx(0.25))
    ledger.mark_running(key, "run_2", now=4.0, charged_cost=0.3)
    assert ledger.money() == (pytest.approx(0.7), 0.0)


def test_set_charged_logs_an_event(ledger: Ledger, job_in: JobIn) -> None:
    """A late bill is stored in any state and logged with the previous value."""
    key = job_in(S.DONE)
    rec = ledger.set_charged(key, 0.8, now=77.0)
    assert rec == ledger.get(key)  # the job as it is afterwards, its outputs included
    assert (rec.charged_cost, len(rec.outputs)) == (0.8, 2)
    event = ledger.events(key)[-1]
    assert (event["at"], event["from_state"], event["to_state"]) == (77.0, "done", "done")
    assert event["detail"] == {"action": "set_charged", "charged_cost": 0.8, "previous": None}
    assert ledger.get(key).charged_cost == 0.8
    with pytest.raises(LedgerConflict):
        ledger.set_charged(JobKey("fk1:ghost"), 1.0)
    planned = job_in(S.PLANNED)  # no outputs: none read
    assert ledger.set_charged(planned, 0.1) == ledger.get(planned)


# -- meta, events, lifecycle -----------------------------------------------------------


def test_meta_roundtrip(ledger: Ledger) -> None:
    """set_meta stores, replaces and get_meta reads; unknown names are None."""
    assert ledger.get_meta("manifest") is None
    ledger.set_meta("manifest", "/data/batch.yaml")
    ledger.set_meta("manifest", "/data/other.yaml")
    assert ledger.get_meta("manifest") == "/data/other.yaml"


def test_a_batch_s_cost_unit_defaults_to_usd_and_mixed_batches_say_so(ledger: Ledger) -> None:
    """Ledgers older than the record count USD; batches that disagree read ``mixed``."""
    assert ledger.cost_unit(["a"]) == "usd" and ledger.cost_unit([]) == "usd"
    ledger.set_cost_unit("a", "credits")
    assert ledger.cost_unit(["a"]) == "credits"
    assert ledger.cost_unit(["a", "b"]) == "mixed"
    assert money(1234.5, "credits") == "1,234 credits" and money(2.5) == "$2.50"
    assert money(2.5, "mixed") == "2.50 (mixed)"


def test_events_of_all_jobs_in_order(ledger: Ledger, job_in: JobIn) -> None:
    """events() without a key returns every job's events, oldest first."""
    a = job_in(S.SUBMITTING)
    b = job_in(S.PLANNED)
    log = ledger.events()
    assert [e["job_key"] for e in log] == [a, a, b]
    assert [e["id"] for e in log] == sorted(e["id"] for e in log)


def test_closed_ledger_refuses_work(open_ledger: Opener) -> None:
    """A closed ledger raises LedgerError instead of reconnecting silently."""
    ledger = open_ledger()
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.counts()


def test_context_manager_closes(open_ledger: Opener) -> None:
    """Leaving a ``with`` block closes the ledger."""
    with open_ledger() as ledger:
        ledger.set_meta("a", "b")
    with pytest.raises(LedgerError):
        ledger.get_meta("a")


def test_a_lost_run_is_kept_reopened_or_bought_again_at_the_user_s_word(
    ledger: Ledger, job_in: JobIn
) -> None:
    """mark_lost keeps the run; reopen_lost polls it again; resubmit starts a new attempt."""
    key = job_in(S.RUNNING)
    run_id = ledger.get(key).run_id
    lost = ledger.mark_lost(key, now=NOW, reason="FLORA answers 404 for the run")
    assert (lost.state, lost.run_id, lost.error_code) == (S.UNRESOLVED, run_id, "run_not_found")
    back = ledger.reopen_lost(key, now=NOW + 1)
    assert (back.state, back.run_id, back.error_code) == (S.RUNNING, run_id, None)
    ledger.mark_lost(key, now=NOW + 2, reason="again")
    fresh = ledger.resubmit_unresolved(key, now=NOW + 3)
    assert (fresh.state, fresh.run_id, fresh.idempotency_key) == (S.PLANNED, None, f"{key}-r2")
    unidentified = job_in(S.UNRESOLVED)  # no run: nothing to poll again
    error = assert_unchanged(ledger, unidentified, lambda: ledger.reopen_lost(unidentified, now=1))
    assert "has no run" in str(error)


def test_set_meta_survives_a_row_another_process_inserted_meanwhile(
    open_ledger: Opener,
) -> None:
    """Two workers set one meta name at once: the one whose insert loses the race updates
    the row the other inserted, instead of failing (a duplicate key on PostgreSQL)."""
    mine = open_ledger()
    if mine.url.startswith("sqlite"):
        pytest.skip("SQLite's write lock (BEGIN IMMEDIATE) serialises the two already")
    theirs = open_ledger()
    raced: list[bool] = []

    def meanwhile(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE META") and not raced:
            raced.append(True)  # after our UPDATE found nothing, before our INSERT
            theirs.set_meta("server-clock-offset", "1.0")

    sqlalchemy.event.listen(mine._engine, "after_cursor_execute", meanwhile)
    try:
        mine.set_meta("server-clock-offset", "2.0")
    finally:
        sqlalchemy.event.remove(mine._engine, "after_cursor_execute", meanwhile)
    assert raced and mine.get_meta("server-clock-offset") == "2.0"
    theirs.close()

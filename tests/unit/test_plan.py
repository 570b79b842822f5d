"""make_plan: the batch's jobs sorted against the ledger, and what a run would cost."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit_support import CATALOG, make_spec

from flora_batch.keys import job_key
from flora_batch.plan import Known, make_plan, plan_keyed, plan_known
from flora_batch.types import JobKey, JobSpec, JobState


def spec(row: int, url: str | None = None, technique: str = "studio-shot", **kw: object) -> JobSpec:
    """A job for row ``row`` whose input differs per row unless ``url`` is given."""
    slot = "image" if technique == "palette-pull" else "product"
    value = url or f"https://media.flora.ai/{row}.png"
    return make_spec(((slot, "imageUrl", value),), technique=technique, row_index=row, **kw)


def known(s: JobSpec, state: JobState) -> tuple[JobKey, Known]:
    """A ledger entry for this spec."""
    return job_key(s), (state, s.technique, s.row_id, s.row_index)


def test_every_state_lands_in_its_group() -> None:
    """New, done, in flight (every working state), failed and unresolved are told apart."""
    states = [
        None,
        JobState.DONE,
        JobState.PLANNED,
        JobState.SUBMITTING,
        JobState.RUNNING,
        JobState.DOWNLOADING,
        JobState.NEEDS_RECONCILE,
        JobState.FAILED,
        JobState.UNRESOLVED,
    ]
    specs = [spec(i) for i in range(len(states))]
    ledger = dict(known(s, st_) for s, st_ in zip(specs, states, strict=True) if st_ is not None)
    plan = make_plan(specs, ledger, CATALOG)
    keys = [job_key(s) for s in specs]
    assert plan.batch == "spring"
    assert list(plan.keys) == keys
    assert plan.new == (keys[0],)
    assert plan.done == (keys[1],)
    assert plan.in_flight == tuple(keys[2:7])
    assert plan.failed == (keys[7],)
    assert plan.unresolved == (keys[8],)
    assert plan.changed == ()
    assert plan.retired == ()


def test_cost_counts_new_and_never_sent_jobs() -> None:
    """New jobs and planned-but-unsent jobs are billable; running and done ones are not."""
    specs = [spec(0), spec(1), spec(2), spec(3, technique="palette-pull")]
    ledger = dict([known(specs[1], JobState.PLANNED), known(specs[2], JobState.RUNNING)])
    plan = make_plan(specs, ledger, CATALOG)
    assert plan.cost_by_technique == {"studio-shot": 0.12, "palette-pull": 0.04}
    assert plan.total_cost == 0.16


def test_retry_failed_adds_failed_jobs_to_the_cost() -> None:
    """With retry_failed, failed jobs count; without, they do not."""
    specs = [spec(0), spec(1)]
    ledger = dict([known(specs[0], JobState.FAILED), known(specs[1], JobState.DONE)])
    assert make_plan(specs, ledger, CATALOG).total_cost == 0
    assert make_plan(specs, ledger, CATALOG, retry_failed=True).total_cost == 0.06


def test_unknown_technique_costs_nothing() -> None:
    """A technique missing from the mapping is estimated at zero, not a crash."""
    plan = make_plan([spec(0, technique="gone")], {}, CATALOG)
    assert plan.cost_by_technique == {"gone": 0.0}


def test_edited_row_is_changed_by_id() -> None:
    """Same technique and row id, different inputs: (old key, new key), and new is billable."""
    old = spec(0, row_id="A1")
    edited = spec(5, url="https://media.flora.ai/edited.png", row_id="A1")
    plan = make_plan([edited], dict([known(old, JobState.DONE)]), CATALOG)
    assert plan.changed == ((job_key(old), job_key(edited)),)
    assert plan.new == (job_key(edited),)
    assert plan.retired == ()
    assert plan.total_cost == 0.06


def test_edited_row_is_changed_by_position_without_ids() -> None:
    """Without an id column the row index pairs the old and new keys."""
    old = spec(3)
    edited = spec(3, url="https://media.flora.ai/edited.png")
    plan = make_plan([spec(0), edited], dict([known(old, JobState.FAILED)]), CATALOG)
    assert plan.changed == ((job_key(old), job_key(edited)),)


def test_deleted_row_is_retired() -> None:
    """A ledger key no row produces, with no edit to explain it, is retired."""
    gone = spec(7, row_id="Z9")
    kept = spec(0, row_id="A1")
    ledger = dict([known(gone, JobState.DONE), known(kept, JobState.DONE)])
    plan = make_plan([kept], ledger, CATALOG)
    assert plan.retired == (job_key(gone),)
    assert plan.done == (job_key(kept),)
    assert plan.changed == ()


def test_other_technique_is_not_a_change() -> None:
    """An old key of another technique for the same row is retired, not paired."""
    old = spec(0, technique="palette-pull", row_id="A1")
    new = spec(0, row_id="A1")
    plan = make_plan([new], dict([known(old, JobState.DONE)]), CATALOG)
    assert plan.changed == ()
    assert plan.retired == (job_key(old),)


def test_empty_plan() -> None:
    """No rows and an empty ledger give an empty plan."""
    plan = make_plan([], {}, CATALOG)
    assert (plan.batch, plan.keys, plan.new, plan.total_cost) == ("", (), (), 0)


def test_duplicate_keys_and_mixed_batches_are_bugs() -> None:
    """Specs with equal keys, or from two batches, raise ValueError."""
    with pytest.raises(ValueError, match="same key"):
        make_plan([spec(0), spec(1, url="https://media.flora.ai/0.png")], {}, CATALOG)
    with pytest.raises(ValueError, match="more than one batch"):
        make_plan([spec(0), spec(1, batch="other")], {}, CATALOG)


STATES = st.none() | st.sampled_from(list(JobState))


@settings(max_examples=200)
@given(states=st.lists(STATES, min_size=1, max_size=8), data=st.data())
def test_reordering_rows_changes_nothing_but_order(
    states: list[JobState | None], data: st.DataObject
) -> None:
    """Shuffled specs give the same groups (as sets), the same changes and the same cost."""
    specs = [spec(i, row_id=f"r{i}") for i in range(len(states))]
    ledger = dict(known(s, state) for s, state in zip(specs, states, strict=True) if state)
    gone = spec(99, row_id="r0", url="https://media.flora.ai/old.png")
    ledger.update([known(gone, JobState.DONE)])
    shuffled = data.draw(st.permutations(specs))
    a, b = make_plan(specs, ledger, CATALOG), make_plan(shuffled, ledger, CATALOG)
    for group in ("new", "done", "in_flight", "failed", "unresolved", "changed", "retired"):
        assert set(getattr(a, group)) == set(getattr(b, group))
    assert a.cost_by_technique == b.cost_by_technique
    assert a.total_cost == b.total_cost
    every = [*a.new, *a.done, *a.in_flight, *a.failed, *a.unresolved]
    assert sorted(every) == sorted(a.keys)
    assert {old for old, _ in a.changed} | set(a.retired) == {job_key(gone)}


KNOWN_STATES = st.sampled_from(list(JobState))


@settings(max_examples=200)
@given(
    states=st.lists(KNOWN_STATES, min_size=0, max_size=8),
    techniques=st.lists(st.sampled_from(["studio-shot", "palette-pull"]), min_size=8, max_size=8),
    retired=st.integers(0, 3),
    retry_failed=st.booleans(),
)
def test_plan_known_is_plan_keyed_when_the_ledger_knows_every_key(
    states: list[JobState], techniques: list[str], retired: int, retry_failed: bool
) -> None:
    """The plan memo's planner (keys only, techniques from the ledger) gives the plan
    ``plan_keyed`` gives with the specs, field by field, retired ledger keys included."""
    specs = [spec(i, technique=t) for i, t in zip(range(len(states)), techniques, strict=False)]
    ledger = dict(known(s, state) for s, state in zip(specs, states, strict=True))
    ledger.update(known(spec(50 + i), JobState.DONE) for i in range(retired))
    keyed = [(job_key(s), s) for s in specs]
    slow = plan_keyed(keyed, ledger, CATALOG, retry_failed=retry_failed)
    batch = specs[0].batch if specs else ""
    keys = [k for k, _ in keyed]
    quick = plan_known(batch, keys, ledger, CATALOG, retry_failed=retry_failed)
    assert quick == slow


def test_plan_known_refuses_a_key_the_ledger_lacks() -> None:
    """Without a spec, a new key cannot be planned: that is ``plan_keyed``'s job."""
    with pytest.raises(ValueError, match="does not know"):
        plan_known("spring", [job_key(spec(0))], {}, CATALOG)

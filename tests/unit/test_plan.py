"""make_plan: the batch's jobs sorted against the ledger, and what a run would cost."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit_support import CATALOG, make_spec

from flora_batch.keys import job_key
from flora_batch.manifest.jobs import number_occurrences
from flora_batch.plan import Known, keep_earlier_keys, make_plan, plan_keyed, plan_known
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


# -- keep_earlier_keys: a row id keeps its job whatever the numbering --------------------

TWIN_URL = "https://media.flora.ai/twin.png"


def twins(ids: list[str], *, other: frozenset[str] = frozenset()) -> list[tuple[JobKey, JobSpec]]:
    """Rows with these ids, all identical but those in ``other`` (each its own input), keyed
    as build_keyed_jobs keys them for a manifest with an id column."""
    url = {sku: f"https://media.flora.ai/{sku}.png" if sku in other else TWIN_URL for sku in ids}
    specs = [spec(n, url[sku], row_id=sku) for n, sku in enumerate(ids)]
    return [(job_key(s), s) for s in number_occurrences(specs)]


Ledger = tuple[dict[JobKey, Known], dict[JobKey, int]]


def ledger_of(jobs: list[tuple[JobKey, JobSpec]], state: JobState = JobState.DONE) -> Ledger:
    """The ledger entries and non-zero occurrences these jobs would leave."""
    entries = {k: (state, s.technique, s.row_id, s.row_index) for k, s in jobs}
    return entries, {k: s.occurrence for k, s in jobs if s.occurrence}


def by_order(ids: list[str]) -> list[tuple[JobKey, JobSpec]]:
    """What flora-batch keyed identical rows as before #16: occurrence 0, 1, 2 by row order."""
    specs = [spec(n, TWIN_URL, row_id=sku, occurrence=n) for n, sku in enumerate(ids)]
    return [(job_key(s), s) for s in specs]


def test_a_ledger_numbered_by_row_order_keeps_its_keys_and_only_the_inserted_row_is_new() -> None:
    """Occurrence-n jobs of an old ledger stay their rows' jobs; the inserted twin is new."""
    old = by_order(["A1", "A2", "A3"])
    known, occurrences = ledger_of(old)
    kept = keep_earlier_keys(twins(["A1", "A9", "A2", "A3"]), known, occurrences)
    keys = {s.row_id: k for k, s in kept}
    assert {sku: keys[sku] for sku in ("A1", "A2", "A3")} == {s.row_id: k for k, s in old}
    assert keys["A9"].startswith("fk2:") and keys["A9"] not in known
    assert all(job_key(s) == k for k, s in kept)
    plan = plan_keyed(kept, known, CATALOG)
    assert plan.new == (keys["A9"],) and plan.changed == () and plan.retired == ()


def test_a_lone_row_keeps_its_key_when_a_twin_appears_and_after_the_twin_goes() -> None:
    """A1 alone (fk1), A9 its twin added (A1 keeps fk1), A1 deleted: A9 keeps its fk2 key."""
    alone = twins(["A1"])
    known, occurrences = ledger_of(alone)
    pair = keep_earlier_keys(twins(["A1", "A9"]), known, occurrences)
    assert pair[0] == alone[0]
    known, occurrences = ledger_of([*alone, pair[1]])
    [(key, _)] = keep_earlier_keys(twins(["A9"]), known, occurrences)
    assert key == pair[1][0] and key.startswith("fk2:")


def test_a_renamed_lone_row_stays_its_job_and_no_key_is_taken_twice() -> None:
    """A unique row whose id was renamed keeps its key (ids are not hashed for it), and a
    ledger key another row produces is never taken."""
    known, occurrences = ledger_of(twins(["B2"]))
    assert keep_earlier_keys(twins(["B3"]), known, occurrences) == twins(["B3"])
    old = by_order(["A1", "A2"])
    known, occurrences = ledger_of(old)
    jobs = twins(["A2", "A1"])  # swapped: A2's old key is occurrence 1, A1's occurrence 0
    kept = keep_earlier_keys(jobs, known, occurrences)
    assert {s.row_id: k for k, s in kept} == {s.row_id: k for k, s in old}
    assert len({k for k, _ in kept}) == 2


def test_a_job_recorded_without_an_id_column_is_found_by_its_row_position() -> None:
    """An id column added to a batch of twins: each row keeps the job its position had."""
    old = [(k, replace(s, row_id=None)) for k, s in by_order(["A1", "A2"])]
    known, occurrences = ledger_of(old)
    kept = keep_earlier_keys(twins(["A1", "A2"]), known, occurrences)
    assert [k for k, _ in kept] == [k for k, _ in old]


@settings(max_examples=100, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(["insert", "delete", "move", "edit"]), st.integers(0, 30)),
        max_size=8,
    ),
    first=st.integers(1, 5),
)
def test_a_row_id_keeps_its_job_through_any_edits(edits: list[tuple[str, int]], first: int) -> None:
    """Twin rows inserted, deleted, moved and edited between runs over a ledger numbered by
    row order: a row gets the job the ledger records for its id and inputs, keys stay
    distinct, and each key is its spec's."""
    ids = [f"R{n}" for n in range(first)]
    other: set[str] = set()
    recorded = dict(by_order(ids))
    fresh = iter(range(100, 200))
    for kind, n in edits:
        if kind == "insert":
            ids.insert(n % (len(ids) + 1), f"R{next(fresh)}")
        elif ids and kind == "delete":
            ids.pop(n % len(ids))
        elif ids and kind == "move":
            ids.append(ids.pop(n % len(ids)))
        elif ids:
            other ^= {ids[n % len(ids)]}
        had = {(s.row_id, job_key(replace(s, occurrence=0))): k for k, s in recorded.items()}
        known, occurrences = ledger_of(list(recorded.items()))
        jobs = keep_earlier_keys(twins(ids, other=frozenset(other)), known, occurrences)
        assert len({k for k, _ in jobs}) == len(jobs)
        for k, s in jobs:
            assert job_key(s) == k
            assert had.get((s.row_id, job_key(replace(s, occurrence=0))), k) == k, (s, ids)
            recorded.setdefault(k, s)

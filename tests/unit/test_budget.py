"""The budget (``budget.py``): bills known, plus holds at the highest bill seen; pure."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flora_batch.types import JobKey
from flora_batch.worker.budget import Budget


def key(n: int) -> JobKey:
    """A job key for the n-th run."""
    return JobKey(f"fk1:{n}")


def test_a_run_is_held_at_the_larger_of_its_quote_and_the_highest_bill() -> None:
    """Once a bill of 0.3 is known, a 0.1 quote holds 0.3; a 0.5 quote holds 0.5."""
    budget = Budget(cap=10.0)
    budget.hold(key(1), "t", 0.1)
    budget.billed(key(1), "t", 0.3, informative=True)
    budget.hold(key(2), "t", 0.1)
    budget.hold(key(3), "t", 0.5)
    assert budget.committed() == 0.3 + 0.3 + 0.5


def test_a_higher_bill_raises_every_hold_of_its_technique() -> None:
    """Holds follow the highest bill: a run billed above the others raises what they hold."""
    budget = Budget(cap=None, highest={"t": 0.2})
    budget.hold(key(1), "t", 0.1)
    budget.hold(key(2), "t", 0.1)
    budget.billed(key(1), "t", 0.9, informative=True)
    assert budget.committed() == 0.9 + 0.9


def test_an_unknown_technique_is_bought_one_run_at_a_time_under_a_cap() -> None:
    """Under a cap, a second run of a technique with no known bill waits for the first's."""
    budget = Budget(cap=5.0)
    assert budget.allows("t", 0.0) and not budget.awaits_first_bill("t")
    budget.hold(key(1), "t", 0.0)
    assert budget.awaits_first_bill("t") and not budget.allows("t", 0.0)
    assert budget.allows("other", 0.0)
    budget.billed(key(1), "t", 1.0, informative=True)
    assert not budget.awaits_first_bill("t") and budget.allows("t", 0.0)
    assert not Budget(cap=None).awaits_first_bill("t")


def test_a_full_budget_is_a_stop_not_a_wait_for_a_bill() -> None:
    """Over the cap already, a technique with no run held does not wait for a first bill
    (a loop that waited would never end): it is simply not allowed."""
    budget = Budget(cap=1.0, base=2.0)
    assert not budget.allows("t", 0.0) and not budget.awaits_first_bill("t")


def test_a_refunded_failure_does_not_tell_a_technique_s_price() -> None:
    """A failed run billed 0 counts in the money but leaves the technique's bill unknown."""
    budget = Budget(cap=5.0)
    budget.hold(key(1), "t", 0.2)
    budget.billed(key(1), "t", 0.0, informative=False)
    assert "t" not in budget.highest and budget.committed() == 0.0
    budget.release(key(1))  # a release after the bill changes nothing
    assert budget.committed() == 0.0


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([0.0, 0.1, 0.25])),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([1.0, 1.5, 3.0]),
)
def test_committed_is_bills_plus_holds_at_the_highest_bill(
    runs: list[tuple[str, float]], factor: float
) -> None:
    """Whatever order runs are held and billed in (bills a steady factor of the quote),
    ``committed`` is the bills so far plus each unbilled run at max(quote, highest)."""
    budget = Budget(cap=None)
    for n, (technique, quote) in enumerate(runs):
        budget.hold(key(n), technique, quote)
    billed = 0.0
    for n, (technique, quote) in enumerate(runs[::2]):
        budget.billed(key(2 * n), technique, quote * factor, informative=True)
        billed += quote * factor
    held = [(t, q) for n, (t, q) in enumerate(runs) if n % 2]
    expected = billed + sum(max(q, budget.highest.get(t, 0.0)) for t, q in held)
    assert abs(budget.committed() - expected) < 1e-9

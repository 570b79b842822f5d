"""What a batch has committed of its ``max_cost``: bills known, plus a hold on every run
whose bill is not (a pure account; the worker feeds it, the ledger's ``money`` agrees).

A quote is not a bill (CONTRACT.md §3-4): FLORA may bill above it, quote 0 or nothing,
and bill late.  So the hold on a run is the larger of its quote and the highest bill
seen so far for its technique (``Ledger.highest_bills``), raised for every run still
held whenever a higher bill arrives; and while no bill of a technique is known, a
capped batch holds one of its runs at a time, so the first bill is learned before a
second run is bought.  A run stays held until its bill is read, failed runs included.

What that guarantees, and no more (docs/design.md, "The budget"): a capped batch never
buys a run whose hold does not fit under ``max_cost``; it ends above the cap only if a
bill exceeds every bill seen before for its technique (the first bill of a technique
above its quote, or bills that grow), and then by at most that excess per run in flight.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..types import JobKey, JobRecord, JobState

#: States in which a job may have a run whose bill is not known yet (``Ledger.money``'s).
_OWING = frozenset(
    {
        JobState.SUBMITTING,
        JobState.RUNNING,
        JobState.NEEDS_RECONCILE,
        JobState.UNRESOLVED,
        JobState.DOWNLOADING,
        JobState.DONE,
    }
)

#: Money is compared with this slack: bills are floats summed over many runs.
EPSILON = 1e-9


@dataclass
class Budget:
    """The batch's money as the worker sees it: ``committed()`` against ``cap``.

    Args:
        cap: ``max_cost``; None buys without limit (the holds are still counted).
        base: what is committed outside the holds: the batch's known bills, and the
            reservations of its jobs that this worker does not hold itself.
        highest: the highest informative bill seen so far per technique.
    """

    cap: float | None
    base: float = 0.0
    highest: dict[str, float] = field(default_factory=dict)
    _holds: dict[JobKey, tuple[str, float]] = field(default_factory=dict)
    _quotes: dict[str, Counter[float]] = field(default_factory=dict)

    def reserve(self, technique: str, quote: float) -> float:
        """What a run of ``technique`` quoted ``quote`` is held at."""
        return max(quote, self.highest.get(technique, 0.0))

    def committed(self) -> float:
        """Bills known plus every hold, at today's highest bills."""
        total = self.base
        for technique, quotes in self._quotes.items():
            top = self.highest.get(technique, 0.0)
            total += sum(max(q, top) * n for q, n in quotes.items())
        return total

    def allows(self, technique: str, quote: float) -> bool:
        """Whether one more run of ``technique`` may be bought now."""
        if self.cap is None:
            return True
        if self.awaits_first_bill(technique):
            return False
        return self.committed() + self.reserve(technique, quote) <= self.cap + EPSILON

    def awaits_first_bill(self, technique: str) -> bool:
        """Under a cap, a technique with no known bill is bought one run at a time: whether
        one of its runs is held, so the next must wait for that bill (not a stop)."""
        return (
            self.cap is not None
            and technique not in self.highest
            and bool(self._quotes.get(technique))
        )

    def holds(self, key: JobKey) -> bool:
        """Whether ``key``'s run is held (bought or being bought, bill unknown)."""
        return key in self._holds

    def hold(self, key: JobKey, technique: str, quote: float) -> None:
        """A run may exist for ``key`` from now on: hold it until its bill is known."""
        if key in self._holds:
            return
        self._holds[key] = (technique, quote)
        self._quotes.setdefault(technique, Counter())[quote] += 1

    def release(self, key: JobKey) -> None:
        """Nothing was bought for ``key`` after all: its hold goes."""
        found = self._holds.pop(key, None)
        if found is None:
            return
        technique, quote = found
        quotes = self._quotes[technique]
        quotes[quote] -= 1
        if quotes[quote] <= 0:
            del quotes[quote]

    def billed(self, key: JobKey, technique: str, bill: float, *, informative: bool) -> None:
        """``key``'s bill is known: it replaces the hold (or adds to the base if none).

        ``informative``: the bill tells what a run of the technique costs (a run that did
        not fail, or any bill above 0): it may raise the technique's highest bill.
        """
        self.release(key)
        self.base += bill
        if informative:
            self.highest[technique] = max(bill, self.highest.get(technique, bill))

    def first_bill_over(self, technique: str, quote: float) -> bool:
        """Whether ``technique``'s bills are known to exceed ``quote`` (for the summary)."""
        return self.highest.get(technique, 0.0) > quote + EPSILON


def may_owe_a_bill(rec: JobRecord) -> bool:
    """Whether ``rec`` may have a run to be billed for: in a state that may have one, or
    failed with a run (a failed run may be billed, late).  ``Ledger.money`` agrees."""
    return rec.state in _OWING or (rec.state is JobState.FAILED and rec.run_id is not None)

"""What a run would do: the batch's jobs sorted against what the ledger already knows.

``make_plan`` is pure: it reads no ledger, only the ``known`` mapping the caller took
from it, so ``flora-batch plan`` can show exactly what ``run`` would pay for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .keys import job_key
from .types import JobKey, JobSpec, JobState, Technique

#: A ledger entry as ``make_plan`` needs it: (state, technique slug, row id, row index).
Known = tuple[JobState, str, str | None, int]

#: States whose job is still being worked on: resume it, never create it again.
IN_FLIGHT = frozenset(
    {
        JobState.PLANNED,
        JobState.SUBMITTING,
        JobState.RUNNING,
        JobState.DOWNLOADING,
        JobState.NEEDS_RECONCILE,
    }
)
#: States of a job whose paid run may exist and is not finished (a create may have left).
RUN_IN_FLIGHT = IN_FLIGHT - {JobState.PLANNED}


@dataclass(frozen=True)
class Plan:
    """The batch's jobs, classified against the ledger.

    Every key the rows produce is in exactly one of ``new``, ``done``, ``in_flight``,
    ``failed`` and ``unresolved``; each key group keeps row order.  ``changed`` pairs an
    old ledger key with the new key of the same row and technique (the row's inputs
    were edited): the new key is also in ``new``.  ``retired`` holds the ledger keys no
    row produces any more and that no edit explains (the row was deleted).  A ledger
    key that no row produces is in exactly one of ``changed`` (as the old key) or
    ``retired``.

    ``superseded`` holds the ledger keys no row produces (in ``changed`` or
    ``retired``) whose paid run may be in flight (``RUN_IN_FLIGHT``): ``run`` drives them
    to their end whatever their row says now (polled, reconciled, downloaded under
    ``_superseded/``), never buying them again.  A superseded job still ``planned`` was
    never sent and is left unbought.

    ``cost_by_technique`` and ``total_cost`` estimate what running the plan would
    charge: ``run_cost`` for each new job, each job planned but never sent, and, with
    ``retry_failed``, each failed job.  They are in each technique's ``cost_unit``.

    ``keys`` holds every key the rows produce, in row order.
    """

    batch: str
    keys: tuple[JobKey, ...]
    new: tuple[JobKey, ...]
    done: tuple[JobKey, ...]
    in_flight: tuple[JobKey, ...]
    failed: tuple[JobKey, ...]
    unresolved: tuple[JobKey, ...]
    changed: tuple[tuple[JobKey, JobKey], ...]
    retired: tuple[JobKey, ...]
    cost_by_technique: dict[str, float]
    total_cost: float
    superseded: tuple[JobKey, ...] = ()

    def gone(self) -> tuple[JobKey, ...]:
        """Every ledger key of the batch that no row produces: edited rows' old jobs
        (``changed``), then deleted rows' (``retired``)."""
        return tuple(dict.fromkeys([*(old for old, _ in self.changed), *self.retired]))


def superseded_meta(batch: str) -> str:
    """The ledger ``meta`` row where ``run`` and ``submit`` leave ``Plan.gone()`` for
    ``status``, ``report`` and cluster workers, which read no manifest (``gone_text``)."""
    return f"superseded:{batch}"


def gone_text(plan: Plan) -> str | None:
    """``plan.gone()`` as the ``superseded_meta`` row holds it: one key a line (None: none)."""
    return "\n".join(plan.gone()) or None


def gone_keys(text: str | None) -> frozenset[JobKey]:
    """The keys a ``superseded_meta`` row holds (``gone_text``)."""
    return frozenset(JobKey(k) for k in (text or "").split("\n") if k)


def make_plan(
    specs: Sequence[JobSpec],
    known: Mapping[JobKey, Known],
    techniques: Mapping[str, Technique],
    *,
    retry_failed: bool = False,
) -> Plan:
    """Sort the batch's jobs against the ledger and estimate the cost.

    Args:
        specs: the batch's jobs, in row order (``manifest.build_jobs``).
        known: this batch's ledger entries: key -> (state, technique, row_id, row_index).
        techniques: schemas by slug, for ``run_cost``.
        retry_failed: count failed jobs in the cost, as ``run --retry-failed`` re-runs them.

    Raises:
        ValueError: two specs have the same key, or the specs mix batches; both are bugs
            upstream, since ``build_jobs`` numbers identical jobs apart.
    """
    return plan_keyed(_keyed(specs), known, techniques, retry_failed=retry_failed)


def plan_keyed(
    jobs: Sequence[tuple[JobKey, JobSpec]],
    known: Mapping[JobKey, Known],
    techniques: Mapping[str, Technique],
    *,
    retry_failed: bool = False,
) -> Plan:
    """``make_plan`` for jobs already keyed (``job_key`` of each spec, in row order).

    A batch of 100,000 jobs is keyed once by its caller, not once more here: hashing
    is most of what planning a resumed batch costs.  The checks are ``make_plan``'s.

    Raises:
        ValueError: two jobs have the same key, or the jobs mix batches.
    """
    jobs = list(jobs)
    _check_keyed(jobs)
    batch = jobs[0][1].batch if jobs else ""
    keys = [key for key, _ in jobs]
    return _plan(batch, keys, known, dict(jobs), techniques, retry_failed)


def plan_known(
    batch: str,
    keys: Sequence[JobKey],
    known: Mapping[JobKey, Known],
    techniques: Mapping[str, Technique],
    *,
    retry_failed: bool = False,
) -> Plan:
    """``plan_keyed`` for a batch whose every key the ledger already holds (``memo.py``).

    Nothing is new, so no ``JobSpec`` is needed: each job's technique is the ledger's.
    The plan is the one ``plan_keyed`` makes of the same jobs.

    Raises:
        ValueError: a key repeats, or the ledger does not know one.
    """
    if len(set(keys)) != len(keys):
        raise ValueError("two jobs have the same key")
    if any(key not in known for key in keys):
        raise ValueError("a key the ledger does not know: plan it with plan_keyed")
    return _plan(batch if keys else "", list(keys), known, {}, techniques, retry_failed)


def _plan(
    batch: str,
    keys: list[JobKey],
    known: Mapping[JobKey, Known],
    specs: Mapping[JobKey, JobSpec],
    techniques: Mapping[str, Technique],
    retry_failed: bool,
) -> Plan:
    """Classify, pair the changes, cost: ``specs`` is needed only for the new keys."""
    groups = _classify(keys, known)
    changed, retired = _changes(keys, known, [specs[k] for k in groups["new"]], groups["new"])
    billable = [
        *groups["new"],
        *(k for k in groups["in_flight"] if known[k][0] == JobState.PLANNED),
    ]
    if retry_failed:
        billable += groups["failed"]
    billed = set(billable)
    slugs = [specs[k].technique if k in specs else known[k][1] for k in keys if k in billed]
    costs = _costs(slugs, techniques)
    gone = dict.fromkeys([*(old for old, _ in changed), *retired])
    return Plan(
        batch=batch,
        keys=tuple(keys),
        new=tuple(groups["new"]),
        done=tuple(groups["done"]),
        in_flight=tuple(groups["in_flight"]),
        failed=tuple(groups["failed"]),
        unresolved=tuple(groups["unresolved"]),
        changed=changed,
        retired=retired,
        cost_by_technique=costs,
        total_cost=round(math.fsum(costs.values()), 6),
        superseded=tuple(k for k in gone if known[k][0] in RUN_IN_FLIGHT),
    )


def keep_earlier_keys(
    jobs: Sequence[tuple[JobKey, JobSpec]],
    known: Mapping[JobKey, Known],
    occurrences: Mapping[JobKey, int],
) -> list[tuple[JobKey, JobSpec]]:
    """Each row id keeps the job the ledger has for it, whatever key the rows give now.

    Identical jobs of a manifest with an id column are keyed by their row id
    (``keys.BY_ROW_ID``); older ledgers numbered them by row order (occurrence n), and
    a job alone with its inputs has its occurrence-0 key until a twin row appears.  So
    a job whose key the ledger does not know, or knows for another row id, takes the
    key of the ledger job of the same row id (or, for a ledger job recorded without
    an id column, the same row position), technique and inputs: the same paid run,
    never bought again.  A key another job of the batch produces is never taken.

    Args:
        jobs: the batch's keyed jobs, in row order (``jobs.build_keyed_jobs``).
        known: this batch's ledger entries (``Ledger.known_slots``).
        occurrences: the ledger's ``occurrence`` of the jobs where it is not 0.
    """
    out = list(jobs)
    lost = [i for i, (key, spec) in enumerate(out) if not _still_its_own(key, spec, known)]
    if not lost:
        return out
    by_row = _ledger_rows(known)
    taken = {key for key, _ in out}
    for i in lost:
        spec = out[i][1]
        earlier = _earlier_key(spec, by_row, known, occurrences, taken)
        if earlier is not None:
            out[i] = (earlier, replace(spec, occurrence=occurrences.get(earlier, 0)))
            taken.add(earlier)
    return out


def _still_its_own(key: JobKey, spec: JobSpec, known: Mapping[JobKey, Known]) -> bool:
    """No earlier key to look for: no row id, or the ledger has this key for this row."""
    if spec.row_id is None:
        return True
    entry = known.get(key)
    return entry is not None and entry[2] in (None, spec.row_id)


def _ledger_rows(known: Mapping[JobKey, Known]) -> dict[tuple[str, str], list[JobKey]]:
    """The ledger's keys by row (``_slot``)."""
    by_row: dict[tuple[str, str], list[JobKey]] = {}
    for key, (_, technique, row_id, row_index) in known.items():
        by_row.setdefault(_slot(technique, row_id, row_index), []).append(key)
    return by_row


#: Which of a row's earlier jobs to keep when several match: done, then in flight, then
#: the rest (failed, unresolved), then by key.
_RANK = {JobState.DONE: 0, **dict.fromkeys(IN_FLIGHT, 1)}


def _earlier_key(
    spec: JobSpec,
    by_row: Mapping[tuple[str, str], list[JobKey]],
    known: Mapping[JobKey, Known],
    occurrences: Mapping[JobKey, int],
    taken: set[JobKey],
) -> JobKey | None:
    """The ledger job of this row (by id, else by position when it had no id) made of the
    same inputs under another numbering, if any."""
    by_id = sorted(
        by_row.get(_slot(spec.technique, spec.row_id, spec.row_index), []),
        key=lambda k: (_RANK.get(known[k][0], 2), k),
    )
    at = by_row.get(_slot(spec.technique, None, spec.row_index), [])
    by_position = (k for k in at if known[k][2] is None)
    for key in [*by_id, *by_position]:
        if key not in taken and job_key(replace(spec, occurrence=occurrences.get(key, 0))) == key:
            return key
    return None


def _keyed(specs: Sequence[JobSpec]) -> list[tuple[JobKey, JobSpec]]:
    return [(job_key(spec), spec) for spec in specs]


def _check_keyed(jobs: Sequence[tuple[JobKey, JobSpec]]) -> None:
    if len({key for key, _ in jobs}) != len(jobs):
        raise ValueError("two jobs have the same key: number identical rows with build_jobs")
    if len({spec.batch for _, spec in jobs}) > 1:
        raise ValueError("the jobs belong to more than one batch")


def _group(state: JobState | None) -> str:
    if state is None:
        return "new"
    if state in IN_FLIGHT:
        return "in_flight"
    return {JobState.DONE: "done", JobState.FAILED: "failed"}.get(state, "unresolved")


def _classify(keys: list[JobKey], known: Mapping[JobKey, Known]) -> dict[str, list[JobKey]]:
    groups: dict[str, list[JobKey]] = {
        g: [] for g in ("new", "done", "in_flight", "failed", "unresolved")
    }
    for key in keys:
        entry = known.get(key)
        groups[_group(entry[0] if entry else None)].append(key)
    return groups


def _slot(technique: str, row_id: str | None, row_index: int) -> tuple[str, str]:
    """Which row a job stands for: its id when the batch has an id column, else its position."""
    return (technique, f"id:{row_id}" if row_id is not None else f"index:{row_index}")


def _changes(
    keys: list[JobKey], known: Mapping[JobKey, Known], specs: list[JobSpec], new: list[JobKey]
) -> tuple[tuple[tuple[JobKey, JobKey], ...], tuple[JobKey, ...]]:
    """Pair ledger keys no row produces with the new key of the same row; the rest retire.

    ``specs`` are the new keys' jobs, in the order of ``new``.
    """
    produced = set(keys)
    gone = sorted((k for k in known if k not in produced), key=lambda k: (known[k][3], k))
    new_by_slot: dict[tuple[str, str], list[JobKey]] = {}
    for key, spec in zip(new, specs, strict=True):
        new_by_slot.setdefault(_slot(spec.technique, spec.row_id, spec.row_index), []).append(key)
    changed: list[tuple[JobKey, JobKey]] = []
    retired: list[JobKey] = []
    for old in gone:
        _, technique, row_id, row_index = known[old]
        matches = new_by_slot.get(_slot(technique, row_id, row_index), [])
        changed.extend((old, new_key) for new_key in matches)
        if not matches:
            retired.append(old)
    return tuple(changed), tuple(retired)


def _costs(slugs: Sequence[str], techniques: Mapping[str, Technique]) -> dict[str, float]:
    """Each technique's billable jobs at its ``run_cost`` (``slugs``: one per job)."""
    totals: dict[str, list[float]] = {}
    for slug in slugs:
        technique = techniques.get(slug)
        totals.setdefault(slug, []).append(technique.run_cost if technique else 0.0)
    return {slug: round(math.fsum(costs), 6) for slug, costs in totals.items()}

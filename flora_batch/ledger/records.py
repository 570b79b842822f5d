"""Conversions between database rows and the frozen values of ``flora_batch.types``.

Nothing here runs SQL: ``store.Ledger`` fetches rows (the driver's tuples from ``tx.Tx``,
in ``RECORD_COLUMNS`` / ``OUTPUT_COLUMNS`` order, or dicts by column name) and hands them
to these functions, so callers only ever see ``JobRecord`` and ``OutputRecord``, never
database rows.  ``decode_inputs`` is the one reader of a job's ``inputs`` column.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import RowMapping

from ..errors import LedgerError
from ..keys import compact_json
from ..types import JobKey, JobRecord, JobSpec, JobState, OutputRecord, RunInput

#: A row by column name: SQLAlchemy's, or a dict from ``tx.Tx``.
Row = RowMapping | Mapping[str, Any]

#: States in which a job may have created a run whose bill is not known yet.
RESERVING_STATES = frozenset(
    {
        JobState.SUBMITTING,
        JobState.RUNNING,
        JobState.NEEDS_RECONCILE,
        JobState.UNRESOLVED,
        JobState.DOWNLOADING,
        JobState.DONE,
    }
)


#: Compact JSON text, as stored in the ledger's JSON columns; keys keep their order (a
#: row's cells stay in column order).
dumps = compact_json(sort_keys=False)


def planned_row(
    key: JobKey, spec: JobSpec, quoted_cost: float | None, now: float
) -> dict[str, Any]:
    """The ``jobs`` row of a freshly planned job."""
    return {
        "key": key,
        "idempotency_key": key,
        "batch": spec.batch,
        "technique": spec.technique,
        "row_index": spec.row_index,
        "row_id": spec.row_id,
        "occurrence": spec.occurrence,
        "source": spec.source,
        "inputs": dumps([{"id": i.id, "type": i.type, "value": i.value} for i in spec.inputs]),
        "row": dumps(spec.row),
        "output_name": spec.output_name,
        "state": JobState.PLANNED.value,
        "attempt": 1,
        "quoted_cost": quoted_cost,
        "charged_before": 0.0,
        "request_ids": "[]",
        "updated_at": now,
    }


_STATES = {s.value: s for s in JobState}
#: The C scanner ``json.loads`` ends in (typeshed does not list the attribute).
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _loads(text: str) -> Any:
    """``json.loads``, in half the time for the compact JSON the ledger writes.

    The decoder's scanner alone skips ``loads``' layers (a third of a listing's JSON
    time); any text it does not take whole (surrounding whitespace, an error) goes to
    ``json.loads`` itself, so the result, or the error, is always ``loads``' own.
    """
    try:
        value, end = _SCAN(text, 0)
    except (StopIteration, TypeError):
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


_INPUT_KEYS = frozenset(("id", "type", "value"))


def _parse_inputs(text: str) -> tuple[RunInput, ...]:
    """The ``inputs`` column's JSON list; ValueError unless each item is exactly a RunInput."""
    items = _loads(text)
    if type(items) is not list:
        raise ValueError(f"not a JSON list: {text[:200]!r}")
    for item in items:
        if type(item) is not dict or item.keys() != _INPUT_KEYS:
            raise ValueError(f"not an input (id, type, value): {item!r:.200}")
    return tuple([RunInput(i["id"], i["type"], i["value"]) for i in items])


#: A job's inputs rarely change while it moves through its states, and a JobRecord is
#: built at every transition: each text is decoded once (the values are immutable).
#: A listing skips the cache, which it would only fill with misses.
_cached_inputs = functools.lru_cache(maxsize=4096)(_parse_inputs)


def decode_inputs(key: str, text: str, *, cached: bool = False) -> tuple[RunInput, ...]:
    """A job's ``inputs`` column as RunInputs: the ledger's one reader of that column.

    Raises:
        LedgerError: the text is not what ``planned_row`` writes (an unknown key is not
            dropped: a run must never be bought with inputs other than those recorded).
    """
    try:
        return (_cached_inputs if cached else _parse_inputs)(text)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError too
        raise LedgerError(f"job {key}: the ledger's inputs cannot be read: {exc}") from exc


@functools.lru_cache(maxsize=4096)
def _request_ids(text: str) -> tuple[str, ...]:
    return tuple(_loads(text))


#: The ``jobs`` columns a JobRecord is made of, in the order ``job_record`` takes them.
RECORD_COLUMNS = (
    "key",
    "idempotency_key",
    "batch",
    "technique",
    "row_index",
    "row_id",
    "state",
    "inputs",
    "row",
    "output_name",
    "run_id",
    "attempt",
    "quoted_cost",
    "charged_cost",
    "error_code",
    "error_message",
    "error_category",
    "request_ids",
    "submitted_at",
    "updated_at",
    "completed_at",
    "source",
    "worker_id",
    "lease_until",
)
_RECORD_WIDTH = len(RECORD_COLUMNS)


def job_record(row: Sequence[Any], outputs: Iterable[OutputRecord] = ()) -> JobRecord:
    """A job as a JobRecord, from its ``RECORD_COLUMNS`` (in order; more may follow).

    A transition's own row (``UPDATE ... RETURNING``): its inputs go through the cache.
    """
    (key, ik, batch, technique, row_index, row_id, state, inputs, cells, output_name,
     run_id, attempt, quoted, charged, code, message, category, ids, submitted, updated,
     completed, source, worker, lease) = row[:_RECORD_WIDTH]  # fmt: skip
    return JobRecord(
        key=JobKey(key),
        idempotency_key=ik,
        batch=batch,
        technique=technique,
        row_index=row_index,
        row_id=row_id,
        state=_STATES[state],
        inputs=decode_inputs(key, inputs, cached=True),
        row=_loads(cells),
        output_name=output_name,
        run_id=run_id,
        attempt=attempt,
        quoted_cost=quoted,
        charged_cost=charged,
        error_code=code,
        error_message=message,
        error_category=category,
        request_ids=_request_ids(ids),
        submitted_at=submitted,
        updated_at=updated,
        completed_at=completed,
        outputs=tuple(outputs),
        source=source,
        worker_id=worker,
        lease_until=lease,
    )


def record_of(row: Mapping[str, Any], outputs: Iterable[OutputRecord] = ()) -> JobRecord:
    """``job_record`` for a row by column name (a whole ``jobs`` row)."""
    return job_record([row[name] for name in RECORD_COLUMNS], outputs)


def job_records(
    rows: Iterable[Sequence[Any]], outputs: Mapping[str, Sequence[OutputRecord]]
) -> list[JobRecord]:
    """``job_record`` for driver tuples in ``RECORD_COLUMNS`` order, with their outputs.

    The listing path (``Ledger.jobs``, 100,000 jobs on a resumed batch): unpacking a
    tuple skips SQLAlchemy's row objects and 24 lookups by name per job, and the
    inputs skip the cache, which a listing only fills with misses.
    """
    states, decode, inputs_of, none = _STATES, _loads, decode_inputs, ()
    return [
        JobRecord(
            key=JobKey(key),
            idempotency_key=ik,
            batch=batch,
            technique=technique,
            row_index=row_index,
            row_id=row_id,
            state=states[state],
            inputs=inputs_of(key, inputs),
            row=decode(row),
            output_name=output_name,
            run_id=run_id,
            attempt=attempt,
            quoted_cost=quoted,
            charged_cost=charged,
            error_code=code,
            error_message=message,
            error_category=category,
            request_ids=_request_ids(ids),
            submitted_at=submitted,
            updated_at=updated,
            completed_at=completed,
            outputs=tuple(outputs.get(key, none)),
            source=source,
            worker_id=worker,
            lease_until=lease,
        )
        for (
            key,
            ik,
            batch,
            technique,
            row_index,
            row_id,
            state,
            inputs,
            row,
            output_name,
            run_id,
            attempt,
            quoted,
            charged,
            code,
            message,
            category,
            ids,
            submitted,
            updated,
            completed,
            source,
            worker,
            lease,
        ) in rows
    ]


def event_dict(row: RowMapping) -> dict[str, Any]:
    """An ``events`` row as a plain dict, its detail decoded."""
    return {
        "id": row["id"],
        "job_key": row["job_key"],
        "at": row["at"],
        "from_state": row["from_state"],
        "to_state": row["to_state"],
        "detail": json.loads(row["detail"]),
    }


def conflict_message(
    key: str,
    action: str,
    actual: str | None,
    expected: Sequence[JobState],
    run_id: str | None = None,
) -> str:
    """Why a transition did not apply: no job, or its state and the expected ones.

    ``run_id``: the job's run, for a move that must not touch a job with one (``Move.no_run``);
    named when it is the reason (the state alone would have allowed the move).
    """
    if actual is None:
        return f"job {key}: cannot {action}: no such job in the ledger"
    if run_id is not None and actual in expected:
        return f"job {key}: cannot {action}: it already has run {run_id}"
    wanted = " or ".join(s.value for s in expected)
    return f"job {key}: cannot {action}: it is {actual}, expected {wanted}"


def with_request_id(stored: str, request_id: str | None) -> str | None:
    """The ``request_ids`` JSON with ``request_id`` appended; None if nothing changes."""
    if request_id is None:
        return None
    ids = _request_ids(stored)  # the text the job's record decoded already
    return None if request_id in ids else dumps([*ids, request_id])


#: What one attempt owns; ``retry_failed`` logs these and starts the next attempt blank.
ATTEMPT_COLUMNS = (
    "idempotency_key",
    "run_id",
    "submitted_at",
    "completed_at",
    "charged_cost",
    "error_code",
    "error_message",
    "error_category",
)


def charge(charged_cost: float | None) -> dict[str, Any]:
    """The column change for a bill, if one is known (an unknown bill changes nothing)."""
    return {} if charged_cost is None else {"charged_cost": charged_cost}


def request_ids(row: Row, request_id: str | None) -> dict[str, Any]:
    """The column change adding ``request_id`` to the row's request ids, if it is new."""
    ids = with_request_id(row["request_ids"], request_id)
    return {} if ids is None else {"request_ids": ids}


#: The ``outputs`` columns ``grouped_outputs`` reads, in the order it unpacks them.
OUTPUT_COLUMNS = ("job_key", "output_id", "type", "url", "path", "size", "sha256", "content_type")


def grouped_outputs(rows: Iterable[Sequence[Any]]) -> Mapping[str, list[OutputRecord]]:
    """Outputs by job key, from driver tuples in ``OUTPUT_COLUMNS`` order (order kept)."""
    grouped: dict[str, list[OutputRecord]] = {}
    for key, output_id, kind, url, path, size, sha256, content_type in rows:
        record = OutputRecord(output_id, kind, url, path, size, sha256, content_type)
        grouped.setdefault(key, []).append(record)
    return grouped

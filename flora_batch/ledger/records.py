"""Conversions between database rows and the frozen values of ``flora_batch.types``.

Nothing here runs SQL: ``store.Ledger`` fetches rows (SQLAlchemy's, or plain dicts from
``tx.Tx``) and hands them to these functions, so callers only ever see ``JobRecord`` and
``OutputRecord``, never database rows.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import RowMapping

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


# Keys keep their order (a row's cells stay in column order); one encoder, built once.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> str:
    """Compact JSON text, as stored in the ledger's JSON columns."""
    return _ENCODER.encode(value)


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


def output_record(row: Row) -> OutputRecord:
    """An ``outputs`` row as an OutputRecord."""
    return OutputRecord(
        output_id=row["output_id"],
        type=row["type"],
        url=row["url"],
        path=row["path"],
        size=row["size"],
        sha256=row["sha256"],
        content_type=row["content_type"],
    )


#: A job's inputs and request ids rarely change while it moves through its states, and a
#: JobRecord is built at every transition: decode each text once (the values are immutable).
_DECODED = 4096


@functools.lru_cache(maxsize=_DECODED)
def _inputs(text: str) -> tuple[RunInput, ...]:
    return tuple(RunInput(**item) for item in json.loads(text))


@functools.lru_cache(maxsize=_DECODED)
def _request_ids(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


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


def job_record(row: Row, outputs: Iterable[OutputRecord] = ()) -> JobRecord:
    """A ``jobs`` row (and its outputs) as a JobRecord."""
    return JobRecord(
        key=JobKey(row["key"]),
        idempotency_key=row["idempotency_key"],
        batch=row["batch"],
        technique=row["technique"],
        row_index=row["row_index"],
        row_id=row["row_id"],
        state=_STATES[row["state"]],
        inputs=_inputs(row["inputs"]),
        row=json.loads(row["row"]),
        output_name=row["output_name"],
        run_id=row["run_id"],
        attempt=row["attempt"],
        quoted_cost=row["quoted_cost"],
        charged_cost=row["charged_cost"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        error_category=row["error_category"],
        request_ids=_request_ids(row["request_ids"]),
        submitted_at=row["submitted_at"],
        updated_at=row["updated_at"],
        completed_at=row["completed_at"],
        outputs=tuple(outputs),
        source=row["source"],
        worker_id=row["worker_id"],
        lease_until=row["lease_until"],
    )


#: The ``jobs`` columns ``job_records`` reads, in the order it unpacks them.
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


def job_records(
    rows: Iterable[Sequence[Any]], outputs: Mapping[str, Sequence[OutputRecord]]
) -> list[JobRecord]:
    """``job_record`` for driver tuples in ``RECORD_COLUMNS`` order, with their outputs.

    The listing path (``Ledger.jobs``, 100,000 jobs on a resumed batch): unpacking a
    tuple skips SQLAlchemy's row objects and 24 lookups by name per job, and the
    inputs skip ``_inputs``' cache, which a listing only fills with misses.
    """
    states, decode, none = _STATES, _loads, ()
    return [
        JobRecord(
            key=JobKey(key),
            idempotency_key=ik,
            batch=batch,
            technique=technique,
            row_index=row_index,
            row_id=row_id,
            state=states[state],
            inputs=tuple([RunInput(i["id"], i["type"], i["value"]) for i in decode(inputs)]),
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
    key: str, action: str, actual: str | None, expected: Sequence[JobState]
) -> str:
    """Why a transition did not apply, naming the expected and the actual state."""
    if actual is None:
        return f"job {key}: cannot {action}: no such job in the ledger"
    wanted = " or ".join(s.value for s in expected)
    return f"job {key}: cannot {action}: it is {actual}, expected {wanted}"


def with_request_id(stored: str, request_id: str | None) -> str | None:
    """The ``request_ids`` JSON with ``request_id`` appended; None if nothing changes."""
    ids: list[str] = json.loads(stored)
    if request_id is None or request_id in ids:
        return None
    return dumps([*ids, request_id])


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
    """``group_outputs`` for driver tuples in ``OUTPUT_COLUMNS`` order."""
    grouped: dict[str, list[OutputRecord]] = {}
    for key, output_id, kind, url, path, size, sha256, content_type in rows:
        record = OutputRecord(output_id, kind, url, path, size, sha256, content_type)
        grouped.setdefault(key, []).append(record)
    return grouped


def group_outputs(rows: Iterable[RowMapping]) -> Mapping[str, list[OutputRecord]]:
    """Outputs rows grouped by job key, in the order given."""
    grouped: dict[str, list[OutputRecord]] = {}
    for row in rows:
        grouped.setdefault(row["job_key"], []).append(output_record(row))
    return grouped

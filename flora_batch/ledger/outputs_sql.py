"""SQL on the ``outputs`` table, called by ``store.Ledger`` inside its transactions.

Each function takes the caller's open transaction (a ``tx.Tx``) and never commits: the
ledger method that calls it owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import LedgerConflict
from ..types import OutputRecord, RunOutput
from . import tx as sql
from .records import output_record

#: What a saved file adds to an output; cleared together when the file vanishes.
FILE_COLUMNS = ("path", "size", "sha256", "content_type", "saved_at")


def put_urls(tx: sql.Tx, key: str, items: Sequence[RunOutput]) -> list[OutputRecord]:
    """Insert new outputs; for known ones replace url and type, keeping the saved file.

    Returns the job's outputs afterwards, in the database's order by output id (which
    a collation may make differ from Python's): read again when rows were added to others.
    """
    known = {r["output_id"]: r for r in tx.all(sql.OUTPUTS, {"k": key})}
    added = False
    for item in items:
        params = {"k": key, "o": item.output_id, "type": item.type, "url": item.url}
        row = known.get(item.output_id)
        if row is None:
            tx.run(sql.INSERT_OUTPUT, params)
            new = {"output_id": item.output_id, "type": item.type, "url": item.url}
            known[item.output_id] = {**dict.fromkeys(FILE_COLUMNS), **new}
            added = True
        else:
            tx.run(sql.SET_URL, params)
            row.update(type=item.type, url=item.url)
    if added and len(known) > 1:
        return records(tx, key)
    return [output_record(r) for r in known.values()]


def set_file(tx: sql.Tx, key: str, output_id: str, file: Mapping[str, Any]) -> None:
    """Set (or clear, with None values) an output's file columns.

    Raises:
        LedgerConflict: the job has no output with this id.
    """
    params = {f"set_{name}": value for name, value in file.items()}
    done = tx.run(sql.set_file_statement(tuple(file)), {**params, "k": key, "o": output_id})
    if done != 1:
        raise LedgerConflict(f"job {key} has no output {output_id!r}", key=key)


def records(tx: sql.Tx, key: str) -> list[OutputRecord]:
    """The job's outputs, by output id."""
    return [output_record(r) for r in tx.all(sql.OUTPUTS, {"k": key})]

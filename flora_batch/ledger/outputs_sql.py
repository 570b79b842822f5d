"""SQL on the ``outputs`` table, called by ``store.Ledger`` inside its transactions.

Each function takes the caller's open transaction (a ``tx.Tx``) and never commits: the
ledger method that calls it owns the transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import LedgerConflict
from ..types import OutputRecord, RunOutput
from . import tx as sql

#: What a saved file adds to an output; cleared together when the file vanishes.
FILE_COLUMNS = ("path", "size", "sha256", "content_type", "saved_at")


def put_urls(
    tx: sql.Tx, key: str, items: Sequence[RunOutput], *, known_none: bool = False
) -> list[OutputRecord]:
    """Insert new outputs; for known ones replace url and type, keeping the saved file.

    ``known_none``: the caller knows the job has no outputs yet (its transition's
    RETURNING said so), so they are not looked up.  Returns the job's outputs afterwards,
    in the database's order by output id (which a collation may make differ from
    Python's): read again when several are new.
    """
    known = {} if known_none else {r.output_id: r for r in records(tx, key)}
    added = 0
    for item in items:
        params = {"k": key, "o": item.output_id, "type": item.type, "url": item.url}
        old = known.get(item.output_id)
        if old is None:
            tx.run(sql.INSERT_OUTPUT, params)
            added += 1
            known[item.output_id] = OutputRecord(item.output_id, item.type, item.url)
        else:
            tx.run(sql.SET_URL, params)
            known[item.output_id] = dataclasses.replace(old, type=item.type, url=item.url)
    if added and len(known) > 1:
        return records(tx, key)
    return list(known.values())


def set_file(tx: sql.Tx, key: str, output_id: str, file: Mapping[str, Any]) -> OutputRecord | None:
    """Set (or clear, with None values) an output's file columns.

    Returns the output as it is now if it is the job's only one (then the caller has
    all of them), else None.

    Raises:
        LedgerConflict: the job has no output with this id.
    """
    params = {f"set_{name}": value for name, value in file.items()}
    row = tx.first(sql.set_file_statement(tuple(file)), {**params, "k": key, "o": output_id})
    if row is None:
        raise LedgerConflict(f"job {key} has no output {output_id!r}", key=key)
    return OutputRecord(*row[1:-1]) if row[-1] == 1 else None


def records(tx: sql.Tx, key: str) -> list[OutputRecord]:
    """The job's outputs, by output id."""
    return [OutputRecord(*row) for row in tx.rows(sql.OUTPUTS, {"k": key})]

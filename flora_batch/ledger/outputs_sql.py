"""SQL on the ``outputs`` table, called by ``store.Ledger`` inside its transactions.

Each function takes the caller's open connection and never commits: the ledger method
that calls it owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, update

from ..errors import LedgerConflict
from ..types import OutputRecord, RunOutput
from .records import output_record
from .tables import outputs

#: What a saved file adds to an output; cleared together when the file vanishes.
FILE_COLUMNS = ("path", "size", "sha256", "content_type", "saved_at")


def put_urls(conn: Connection, key: str, items: Sequence[RunOutput]) -> None:
    """Insert new outputs; for known ones replace url and type, keeping the saved file."""
    known = set(conn.execute(select(outputs.c.output_id).where(outputs.c.job_key == key)).scalars())
    for item in items:
        if item.output_id in known:
            conn.execute(
                update(outputs)
                .where(outputs.c.job_key == key, outputs.c.output_id == item.output_id)
                .values(url=item.url, type=item.type)
            )
        else:
            conn.execute(
                insert(outputs).values(
                    job_key=key, output_id=item.output_id, type=item.type, url=item.url
                )
            )
            known.add(item.output_id)


def set_file(conn: Connection, key: str, output_id: str, file: Mapping[str, Any]) -> None:
    """Set (or clear, with None values) an output's file columns.

    Raises:
        LedgerConflict: the job has no output with this id.
    """
    done = conn.execute(
        update(outputs)
        .where(outputs.c.job_key == key, outputs.c.output_id == output_id)
        .values(**file)
    )
    if done.rowcount != 1:
        raise LedgerConflict(f"job {key} has no output {output_id!r}", key=key)


def unsaved(conn: Connection, key: str) -> list[str]:
    """Ids of the job's outputs whose file is not recorded as saved."""
    query = (
        select(outputs.c.output_id)
        .where(outputs.c.job_key == key, outputs.c.sha256.is_(None))
        .order_by(outputs.c.output_id)
    )
    return list(conn.execute(query).scalars())


def records(conn: Connection, key: str) -> list[OutputRecord]:
    """The job's outputs, by output id."""
    query = select(outputs).where(outputs.c.job_key == key).order_by(outputs.c.output_id)
    return [output_record(r) for r in conn.execute(query).mappings()]

"""Insert many rows at once, inside the caller's transaction: planning 100,000 jobs is fast.

Rows go straight to the driver on the transaction's own connection: SQLite gets the
driver's ``executemany`` with plain tuples, PostgreSQL ``COPY ... FROM STDIN`` (measured
for 100,000 jobs: about 0.6 s, against about 6 s through ``executemany``).  SQLAlchemy's
per-row parameter handling would cost more than the inserts themselves at this size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, insert

from ..errors import LedgerConflict, LedgerError

_CHUNK = 5_000  # rows per executemany


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (all with the same keys) into ``table``.

    Raises:
        LedgerConflict: a row breaks a unique constraint.
        LedgerError: the database refused the rows for another reason.
    """
    if not rows:
        return
    dbapi = conn.dialect.loaded_dbapi
    try:
        if conn.dialect.name == "postgresql":
            _copy(conn, table, rows)
        elif conn.dialect.name == "sqlite":
            _executemany(conn, table, rows)
        else:
            conn.execute(insert(table), list(rows))
    except dbapi.IntegrityError as exc:
        raise LedgerConflict(f"cannot insert into {table.name}: {exc}") from exc
    except dbapi.Error as exc:
        raise LedgerError(f"cannot insert into {table.name}: {exc}") from exc


def _columns(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], str]:
    columns = list(rows[0])
    quote = conn.dialect.identifier_preparer.quote
    return columns, ", ".join(quote(c) for c in columns)


def _copy(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    columns, names = _columns(conn, rows)
    sql = f"COPY {conn.dialect.identifier_preparer.quote(table.name)} ({names}) FROM STDIN"
    with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        with cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])


def _executemany(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    columns, names = _columns(conn, rows)
    marks = ", ".join("?" for _ in columns)
    sql = f"INSERT INTO {conn.dialect.identifier_preparer.quote(table.name)} ({names}) "
    sql += f"VALUES ({marks})"
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            cursor.executemany(sql, [tuple(r[c] for c in columns) for r in chunk])
    finally:
        cursor.close()

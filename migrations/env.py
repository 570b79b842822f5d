"""Alembic environment for the flora-batch ledger.

flora-batch runs this from code (``flora_batch.ledger.migrate.upgrade``), passing an open
connection, already inside a transaction, in ``config.attributes["connection"]``; the
migration and its revision stamp then commit together.

To write a new migration by hand, point the Alembic CLI at a scratch ledger::

    .venv/bin/alembic -c migrations/alembic.ini -x url=/tmp/scratch.db upgrade head
    .venv/bin/alembic -c migrations/alembic.ini -x url=/tmp/scratch.db \\
        revision --autogenerate -m "what changed"

then rename the file to ``NNNN_what_changed.py`` with ``revision = "NNNN"``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from flora_batch.ledger import connect
from flora_batch.ledger.tables import VERSION_TABLE, metadata


def run(connection: Connection) -> None:
    """Configure Alembic on ``connection`` and run the pending migrations."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    """Use the caller's connection, or open ``-x url=...`` for the Alembic CLI."""
    if context.is_offline_mode():
        raise SystemExit("flora-batch migrations run online only: pass -x url=<ledger>")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the ledger to migrate: -x url=<path or URL>")
    engine = connect.create(connect.resolve(url))
    try:
        with engine.begin() as conn:
            run(conn)
    finally:
        engine.dispose()


main()

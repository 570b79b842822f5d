"""Run the Alembic migrations from code, and refuse ledgers this code does not understand.

The scripts live in the repository's top-level ``migrations/`` folder; the wheel ships
them as ``flora_batch/_migrations`` (pyproject's force-include).  Alembic runs on a
connection we pass in ``Config.attributes["connection"]``, inside one transaction that
also writes the new revision, so a migration applies entirely or not at all.

A ledger stamped with a revision that this code does not know was written by a newer
flora-batch: :class:`~flora_batch.errors.LedgerTooNew`, before anything is changed.

Alembic is imported only when a ledger is not at ``HEAD`` (new, older or newer): opening
a ledger that is already at head reads its stamp with one query, and every command
(``status`` included) starts ~0.1 s sooner.  ``HEAD`` must name the newest script
(``tests/ledger/test_ledger_migrations.py`` checks it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from ..errors import LedgerError, LedgerTooNew
from .tables import VERSION_TABLE, metadata

if TYPE_CHECKING:
    from alembic.config import Config

#: The newest revision in ``migrations/versions`` (what ``head_revision`` reads there).
HEAD = "0004_runs"

#: Serialises concurrent migrations of one PostgreSQL database (pg_advisory_xact_lock).
_PG_MIGRATION_LOCK = int.from_bytes(
    hashlib.blake2b(b"flora-batch:migrate", digest_size=8).digest(), "big", signed=True
)


def migrations_dir() -> Path:
    """The folder holding ``env.py``: inside the installed package, else the repository's."""
    package = Path(__file__).parent.parent  # flora_batch/
    shipped = package / "_migrations"
    return shipped if shipped.is_dir() else package.parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for our scripts, bound to ``connection`` when given."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


@cache
def known_revisions() -> frozenset[str]:
    """Every revision id this code ships."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    return frozenset(s.revision for s in scripts.walk_revisions())


@cache
def head_revision() -> str:
    """The newest revision this code ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise LedgerError(f"no migrations found in {migrations_dir()}")
    return head


def check_revisions(revisions: Iterable[str], where: str) -> None:
    """Raise LedgerTooNew if any stamped revision is unknown to this code."""
    if set(revisions) <= {HEAD}:  # the common case, without loading the scripts
        return
    unknown = sorted(set(revisions) - known_revisions())
    if unknown:
        raise LedgerTooNew(
            f"{where} is at schema revision {', '.join(unknown)}, which this flora-batch "
            f"does not know (newest known: {head_revision()}): upgrade flora-batch to use it"
        )


def check_is_ledger(
    tables: Iterable[str], revisions: Iterable[str], where: str, *, strict: bool
) -> None:
    """Refuse a database that holds tables but no flora-batch revision.

    ``strict`` (SQLite files) refuses any foreign table; otherwise (a shared PostgreSQL
    database) only tables with our names are suspicious.
    """
    if set(revisions):
        return
    tables = set(tables) - {VERSION_TABLE}
    suspicious = tables if strict else tables & set(metadata.tables)
    if suspicious:
        raise LedgerError(
            f"{where} is not a flora-batch ledger (it has tables "
            f"{', '.join(sorted(suspicious))} but no flora-batch schema revision)"
        )


def current_revisions(connection: Connection) -> frozenset[str]:
    """The revisions stamped in the database (empty for a fresh one)."""
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return frozenset(ctx.get_current_heads())


def upgrade(connection: Connection, where: str, *, strict: bool) -> None:
    """Check, then migrate the database to head, in the caller's transaction.

    Raises:
        LedgerTooNew: the database was written by a newer flora-batch.
        LedgerError: the database holds something that is not a ledger.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    if _at_head(connection):
        return
    from alembic import command
    from alembic.util import CommandError

    revisions = current_revisions(connection)
    check_revisions(revisions, where)
    check_is_ledger(inspect(connection).get_table_names(), revisions, where, strict=strict)
    if revisions == {head_revision()}:
        return
    try:
        command.upgrade(alembic_config(connection), "head")
    except CommandError as exc:  # a revision appeared between our check and the upgrade
        raise LedgerTooNew(f"{where}: {exc}") from exc


def _at_head(connection: Connection) -> bool:
    """Whether the database is stamped with ``HEAD`` alone: two queries, no Alembic."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return False
    stamped = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
    return set(stamped) == {HEAD}


def require_head(connection: Connection, where: str) -> None:
    """For ``migrate=False``: the database must already be at head."""
    if _at_head(connection):
        return
    revisions = current_revisions(connection)
    check_revisions(revisions, where)
    if revisions != {head_revision()}:
        found = ", ".join(sorted(revisions)) or "no schema"
        raise LedgerError(
            f"{where} has {found}, not revision {head_revision()}: open it with migrations on"
        )

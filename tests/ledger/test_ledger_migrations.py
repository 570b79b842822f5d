"""Opening databases: migrations match the tables, and foreign or newer files are refused."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from ledger_support import Opener
from sqlalchemy import Engine, inspect, text

from flora_batch.errors import LedgerError, LedgerTooNew
from flora_batch.ledger import Ledger, connect, migrate
from flora_batch.ledger.tables import VERSION_TABLE, metadata


def engine_for(url: str) -> Engine:
    """A plain engine on the ledger's database, set up as the ledger sets its own."""
    return connect.create(connect.resolve(url))


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def stamp_sqlite(path: Path, revision: str) -> None:
    """Overwrite the stamped revision, as a newer flora-batch would have."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(f"UPDATE {VERSION_TABLE} SET version_num = ?", (revision,))
    conn.close()


def test_upgrade_matches_tables(open_ledger: Opener, ledger_url: str) -> None:
    """An upgraded empty database is exactly tables.metadata (autogenerate finds nothing)."""
    open_ledger().close()
    engine = engine_for(ledger_url)
    try:
        with engine.connect() as conn:
            opts = {"version_table": VERSION_TABLE, "compare_type": True,
                    "compare_server_default": True}  # fmt: skip
            ctx = MigrationContext.configure(conn, opts=opts)
            assert compare_metadata(ctx, metadata) == []
            assert migrate.current_revisions(conn) == {migrate.head_revision()}
    finally:
        engine.dispose()


def test_downgrade_then_upgrade(open_ledger: Opener, ledger_url: str) -> None:
    """The migrations run both ways: down to base leaves no ledger table, up restores them."""
    open_ledger().close()
    engine = engine_for(ledger_url)
    try:
        with engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) & set(metadata.tables) == set()
            assert migrate.current_revisions(conn) == set()
        open_ledger().set_meta("back", "again")
        with engine.connect() as conn:
            assert migrate.current_revisions(conn) == {migrate.head_revision()}
    finally:
        engine.dispose()


def test_unknown_revision_is_too_new_sqlite(tmp_path: Path) -> None:
    """A SQLite ledger stamped by a newer flora-batch raises LedgerTooNew, untouched."""
    path = tmp_path / "batch.ledger"
    Ledger.open(path).close()
    stamp_sqlite(path, "9999_future")
    before = folder_state(tmp_path)
    for migrate_flag in (True, False):
        with pytest.raises(LedgerTooNew, match="9999_future"):
            Ledger.open(path, migrate=migrate_flag)
    assert folder_state(tmp_path) == before


def test_unknown_revision_is_too_new(open_ledger: Opener, ledger_url: str) -> None:
    """On any backend, an unknown revision raises LedgerTooNew and changes nothing."""
    open_ledger().close()
    engine = engine_for(ledger_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_future'"))
        with pytest.raises(LedgerTooNew, match="upgrade flora-batch"):
            open_ledger()
        with engine.connect() as conn:
            assert migrate.current_revisions(conn) == {"9999_future"}
    finally:
        engine.dispose()


def test_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    """A CSV given as the ledger raises LedgerError and the file stays as it was."""
    path = tmp_path / "rows.csv"
    path.write_text("name,prompt\nkiwi,a green bird\n")
    before = folder_state(tmp_path)
    with pytest.raises(LedgerError, match=r"is not a flora-batch ledger \(not a SQLite database\)"):
        Ledger.open(path)
    assert folder_state(tmp_path) == before


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    """A SQLite file with someone else's tables is not adopted as a ledger."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE people (name TEXT)")
    conn.close()
    before = folder_state(tmp_path)
    with pytest.raises(LedgerError, match="people"):
        Ledger.open(path)
    assert folder_state(tmp_path) == before


def test_empty_file_becomes_a_ledger(tmp_path: Path) -> None:
    """A zero-byte file (e.g. from mktemp) is a new ledger."""
    path = tmp_path / "new.ledger"
    path.touch()
    with Ledger.open(path) as ledger:
        assert ledger.get_meta("x") is None


def test_migrate_false_needs_a_migrated_ledger(tmp_path: Path) -> None:
    """migrate=False refuses an empty database and opens a migrated one."""
    path = tmp_path / "batch.ledger"
    with pytest.raises(LedgerError, match="no schema"):
        Ledger.open(path, migrate=False)
    Ledger.open(path).close()
    with Ledger.open(path, migrate=False) as ledger:
        assert ledger.get_meta("x") is None


def test_open_creates_the_parent_folder(tmp_path: Path) -> None:
    """A path in a folder that does not exist yet works; the url names the file."""
    path = tmp_path / "a" / "b" / "batch.ledger"
    with Ledger.open(str(path)) as ledger:
        assert ledger.url == f"sqlite:///{path}"
    assert path.is_file()


def test_sqlite_connections_are_configured(tmp_path: Path) -> None:
    """Every SQLite connection runs WAL, synchronous=NORMAL, busy_timeout and foreign keys."""
    engine = engine_for(str(tmp_path / "x.ledger"))
    try:
        with engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
    finally:
        engine.dispose()
    assert pragmas == {"journal_mode": "wal", "synchronous": 1, "busy_timeout": 5000,
                       "foreign_keys": 1}  # fmt: skip


def test_memory_ledgers_are_private() -> None:
    """':memory:' and 'sqlite://' are each a fresh, private ledger."""
    with Ledger.open(":memory:") as one, Ledger.open("sqlite://") as two:
        one.set_meta("who", "one")
        assert (one.get_meta("who"), two.get_meta("who")) == ("one", None)


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://u:pw@db.example:5432/ledger", "postgresql+psycopg"),
        ("postgres://u@db.example/ledger", "postgresql+psycopg"),
        ("postgresql+psycopg://u@db.example/ledger", "postgresql+psycopg"),
        ("sqlite:///relative.ledger", "sqlite"),
    ],
)
def test_urls_are_resolved(given: str, driver: str) -> None:
    """PostgreSQL URLs use psycopg 3; sqlite URLs become absolute files."""
    target = connect.resolve(given)
    assert target.url.drivername == driver
    assert "pw" not in target.display


def test_unsupported_database_is_refused() -> None:
    """Only SQLite and PostgreSQL are ledgers."""
    with pytest.raises(LedgerError, match="unsupported"):
        connect.resolve("mysql://u@h/db")


def test_postgres_url_hides_the_password(pg_url: str) -> None:
    """ledger.url masks a password given in the URL."""
    with_password = pg_url.replace("postgres@", "postgres:s3cret@", 1)
    with Ledger.open(with_password) as ledger:
        assert "s3cret" not in ledger.url
        assert ledger.url.startswith("postgresql+psycopg://postgres:***@")


def test_migrations_folder_is_found() -> None:
    """In a source checkout the scripts come from the top-level migrations/ folder."""
    folder = migrate.migrations_dir()
    assert (folder / "env.py").is_file()
    assert (folder / "versions" / "0001_initial.py").is_file()
    assert migrate.head_revision() == "0004_runs"


def test_head_names_the_newest_script() -> None:
    """``migrate.HEAD`` (the fast path's stamp check) is the scripts' head: a new migration
    must move it, or every ledger would be opened through Alembic again."""
    assert migrate.HEAD == migrate.head_revision()


def test_opening_a_ledger_at_head_does_not_load_alembic(tmp_path: Path) -> None:
    """A fresh interpreter opening a migrated ledger never imports Alembic."""
    path = tmp_path / "x.ledger"
    Ledger.open(path).close()
    code = (
        "import sys\nfrom flora_batch.ledger import Ledger\n"
        f"Ledger.open({str(path)!r}).close()\n"
        "print('alembic' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"

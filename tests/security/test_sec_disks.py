"""Disks and databases: a full disk, a read-only or missing results folder, a deleted
output, a corrupt, foreign or newer ledger, a ledger that cannot be locked.  Each ends in
a clear message with a documented exit code (1: the batch did not finish; 2: a ledger
from a newer flora-batch), never a traceback; the ledger is left as it was; and the
next run continues without buying anything again.

Full and read-only disks are tmpfs mounts (they need root: skipped with the reason
otherwise, since permission bits do not stop root).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from security_helpers import (
    FAST,
    assert_no_traceback,
    cli_env,
    creates,
    products,
    run_cli,
    write_batch,
)

from flora_batch.errors import EXIT_LOCAL


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Any]:
    """``mount(folder, options)``: a tmpfs at ``folder``, unmounted after the test."""
    mounted: list[Path] = []

    def do(folder: Path, options: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(folder)

    yield do
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> None:
    """Fill the file system holding ``folder`` to the last byte."""
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while fh.write(b"\x00" * 4096):
                pass
        except OSError:
            pass


def integrity(ledger: Path) -> str:
    """SQLite's own verdict on the ledger file."""
    with sqlite3.connect(ledger) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def job_states(ledger: Path) -> list[str]:
    """Every job's state, straight from the file."""
    with sqlite3.connect(ledger) as conn:
        return sorted(r[0] for r in conn.execute("SELECT state FROM jobs"))


@pytest.fixture
def batch(emulator: Any, tmp_path: Path) -> tuple[Any, Path, dict[str, str]]:
    """An emulator, a 4-row batch in tmp_path/b, and the environment to run it."""
    server = emulator()
    return server, write_batch(tmp_path / "b", products(4)), cli_env(server, home=tmp_path)


def test_full_disk_stops_cleanly_and_the_next_run_only_downloads(batch: Any, mount: Any) -> None:
    """Full disk: exit 7, ledger intact; once freed, the next run downloads and buys nothing."""
    server, manifest, env = batch
    results = manifest.parent / "results"
    mount(results, "size=256k")
    fill(results)
    first = run_cli("run", str(manifest), *FAST, env=env)
    assert first.code == EXIT_LOCAL and "No space left on device" in first.err, first.text
    assert_no_traceback(first)
    ledger = manifest.parent / "b.ledger.db"
    assert integrity(ledger) == "ok" and "planned" not in job_states(ledger)
    bought = creates(server)
    os.unlink(results / "filler")
    second = run_cli("run", str(manifest), *FAST, env=env)
    assert second.code == 0, second.text
    assert creates(server) == bought and len(list(results.rglob("*.png"))) == 4
    assert not list((results / ".flora-tmp").iterdir())


def test_read_only_results_folder_is_refused_before_buying(batch: Any, mount: Any) -> None:
    """A read-only results folder: exit 7 with the reason, and nothing bought."""
    server, manifest, env = batch
    mount(manifest.parent / "results", "size=64k,ro")
    res = run_cli("run", str(manifest), *FAST, env=env)
    assert res.code == EXIT_LOCAL and "Read-only file system" in res.err, res.text
    assert_no_traceback(res)
    assert creates(server) == 0


def test_results_folder_that_cannot_exist_is_refused(batch: Any) -> None:
    """A results path under a regular file: a clear error, nothing bought."""
    server, manifest, env = batch
    (manifest.parent / "afile").write_text("x")
    res = run_cli(
        "run", str(manifest), *FAST, "--results", str(manifest.parent / "afile" / "r"), env=env
    )
    assert res.code == EXIT_LOCAL and "cannot create the results folder" in res.err, res.text
    assert_no_traceback(res)
    assert creates(server) == 0


def test_deleted_outputs_and_folder_are_fetched_again_not_bought(batch: Any) -> None:
    """A deleted output file, then the whole results folder: each next run re-downloads."""
    server, manifest, env = batch
    assert run_cli("run", str(manifest), *FAST, env=env).code == 0
    results, bought = manifest.parent / "results", creates(server)
    os.unlink(next(results.rglob("*.png")))
    again = run_cli("run", str(manifest), *FAST, env=env)
    assert again.code == 0 and len(list(results.rglob("*.png"))) == 4, again.text
    subprocess.run(["rm", "-rf", str(results)], check=True)
    third = run_cli("run", str(manifest), *FAST, env=env)
    assert third.code == 0 and len(list(results.rglob("*.png"))) == 4, third.text
    assert creates(server) == bought


@pytest.mark.parametrize("damage", ["garbage", "bit_flips", "foreign_sqlite", "newer"])
def test_damaged_ledger_is_refused_and_left_untouched(batch: Any, damage: str) -> None:
    """Garbage, bit flips, a foreign or newer ledger: clear error, file untouched, no buying."""
    server, manifest, env = batch
    ledger = manifest.parent / "b.ledger.db"
    if damage == "garbage":
        ledger.write_bytes(b"hello, I am not a database" * 100)
    elif damage == "foreign_sqlite":
        with sqlite3.connect(ledger) as conn:
            conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    else:
        assert run_cli("run", str(manifest), *FAST, env=env).code == 0
        _damage(ledger, damage)
    before, bought = ledger.read_bytes(), creates(server)
    res = run_cli("-vv", "run", str(manifest), *FAST, env=env)
    expected = {"newer": 2}.get(damage, EXIT_LOCAL)
    assert res.code == expected, res.text
    assert_no_traceback(res)
    assert {
        "garbage": "not a SQLite database",
        "bit_flips": "not a usable flora-batch ledger",
        "foreign_sqlite": "not a flora-batch ledger",
        "newer": "upgrade flora-batch",
    }[damage] in res.err
    assert ledger.read_bytes() == before and creates(server) == bought


def _damage(ledger: Path, damage: str) -> None:
    if damage == "newer":
        with sqlite3.connect(ledger) as conn:
            conn.execute("UPDATE flora_batch_version SET version_num = '9999_from_the_future'")
        return
    data = bytearray(ledger.read_bytes())
    for i in range(4096, len(data), 97):  # every page but the header's
        data[i] ^= 0x5A
    ledger.write_bytes(bytes(data))


@pytest.mark.parametrize("obstacle", ["directory", "symlink"])
def test_ledger_that_cannot_be_locked_is_a_clear_error(
    batch: Any, tmp_path: Path, obstacle: str
) -> None:
    """A lock path that is a folder, or a planted symlink: a clear error, nothing truncated."""
    server, manifest, env = batch
    lock = manifest.parent / "b.ledger.db.lock"
    victim = tmp_path / "victim.txt"
    victim.write_text("do not truncate me")
    if obstacle == "directory":
        lock.mkdir()
    else:
        os.symlink(victim, lock)
    res = run_cli("run", str(manifest), *FAST, env=env)
    assert res.code == EXIT_LOCAL and "cannot lock" in res.err, res.text
    assert_no_traceback(res)
    assert victim.read_text() == "do not truncate me" and creates(server) == 0
    os.unlink(lock) if obstacle == "symlink" else lock.rmdir()
    assert run_cli("run", str(manifest), *FAST, env=env).code == 0


def test_ledger_on_a_read_only_disk_is_a_clear_error(
    emulator: Any, tmp_path: Path, mount: Any
) -> None:
    """A ledger whose folder became read-only: exit 7 with SQLite's reason, the file intact."""
    server = emulator()
    manifest = write_batch(tmp_path / "b", products(2), extra="ledger: db/b.db\n")
    env = cli_env(server, home=tmp_path)
    db = tmp_path / "b" / "db"
    mount(db, "size=2m")
    assert run_cli("run", str(manifest), *FAST, env=env).code == 0
    before = (db / "b.db").read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(db)], check=True)
    res = run_cli("run", str(manifest), *FAST, env=env)
    assert res.code == EXIT_LOCAL and "ledger" in res.err, res.text
    assert_no_traceback(res)
    assert (db / "b.db").read_bytes() == before and creates(server) == 2

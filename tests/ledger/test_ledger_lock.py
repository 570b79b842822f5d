"""The runner lock: one live run per ledger, and never a stale lock after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ledger_support import Opener

from flora_batch.errors import LedgerBusy
from flora_batch.ledger import Ledger

#: A second process that takes the lock, says so, and sleeps until killed.
HOLDER = """
import sys, time
from flora_batch.ledger import Ledger
ledger = Ledger.open(sys.argv[1])
ledger.acquire_runner_lock()
print("locked", flush=True)
time.sleep(120)
"""


def acquire_soon(ledger: Ledger, timeout: float = 10.0) -> None:
    """Acquire, allowing the server a moment to notice a dead client (PostgreSQL)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ledger.acquire_runner_lock()
            return
        except LedgerBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_second_ledger_is_busy_at_once(open_ledger: Opener) -> None:
    """A second Ledger on the same database gets LedgerBusy immediately."""
    first, second = open_ledger(), open_ledger()
    first.acquire_runner_lock()
    started = time.monotonic()
    with pytest.raises(LedgerBusy, match="another flora-batch run"):
        second.acquire_runner_lock()
    assert time.monotonic() - started < 2.0
    first.release_runner_lock()
    second.acquire_runner_lock()


def test_close_releases_the_lock(open_ledger: Opener) -> None:
    """Closing the holder frees the lock for the next run."""
    first = open_ledger()
    first.acquire_runner_lock()
    first.close()
    open_ledger().acquire_runner_lock()


def test_acquire_twice_is_harmless(open_ledger: Opener) -> None:
    """The holder may ask again; release is idempotent."""
    ledger = open_ledger()
    ledger.acquire_runner_lock()
    ledger.acquire_runner_lock()
    ledger.release_runner_lock()
    ledger.release_runner_lock()


def test_lock_names_are_independent(open_ledger: Opener) -> None:
    """Locks with different names do not exclude each other."""
    open_ledger().acquire_runner_lock("runner")
    open_ledger().acquire_runner_lock("reporter")
    with pytest.raises(LedgerBusy):
        open_ledger().acquire_runner_lock("reporter")


def test_lock_name_is_checked(open_ledger: Opener) -> None:
    """A lock name cannot smuggle a path."""
    with pytest.raises(ValueError, match="lock name"):
        open_ledger().acquire_runner_lock("../x")


@pytest.mark.timeout(60)
def test_lock_of_a_killed_process_does_not_block(open_ledger: Opener, ledger_url: str) -> None:
    """A holder killed with SIGKILL leaves no stale lock behind."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, ledger_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        ledger = open_ledger()
        with pytest.raises(LedgerBusy):
            ledger.acquire_runner_lock()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        acquire_soon(ledger)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_sqlite_lock_is_a_sidecar_file(tmp_path: Path) -> None:
    """On SQLite the lock lives in <db>.lock, which names the holder's pid."""
    path = tmp_path / "batch.ledger"
    with Ledger.open(path) as first, Ledger.open(path) as second:
        first.acquire_runner_lock()
        assert (tmp_path / "batch.ledger.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(LedgerBusy, match=f"pid {os.getpid()}"):
            second.acquire_runner_lock()


def test_memory_ledger_lock_is_a_no_op() -> None:
    """An in-memory ledger has nobody to exclude."""
    with Ledger.open(":memory:") as ledger:
        ledger.acquire_runner_lock()
        ledger.release_runner_lock()

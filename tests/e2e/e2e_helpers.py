"""End-to-end helpers: the emulator on a real loopback socket, and the real CLI as a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import emulators

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
FAST = ["--min-poll", "0.05", "--rate", "0", "--timeout", "2"]


@dataclass
class CliResult:
    """A finished CLI run."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def emulator() -> Iterator[Callable[..., Any]]:
    """Start emulators on loopback ports: ``emulator(speed=..., faults=...)``; all stopped after."""
    with emulators(2000.0) as start:
        yield start


def cli_env(server: Any | None = None, **extra: str) -> dict[str, str]:
    """The environment a user would have: the emulator's URL and key, nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLORA_")}
    if server is not None:
        env["FLORA_BASE_URL"] = server.base_url
        env["FLORA_API_KEY"] = server.api_key
    env.update(extra)
    return env


def cli_cmd(*args: str) -> list[str]:
    """The real command line, as a user would type it."""
    return [sys.executable, "-m", "flora_batch", *args]


@pytest.fixture
def run_cli() -> Callable[..., CliResult]:
    """Run ``flora-batch ARGS`` to completion and capture its output."""

    def run(*args: str, server: Any | None = None, cwd: Path | None = None,
            timeout: float = 120, env: dict[str, str] | None = None) -> CliResult:
        proc = subprocess.run(
            cli_cmd(*args), capture_output=True, text=True, timeout=timeout,
            env=env or cli_env(server), cwd=cwd,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of manifests/ in a temp folder, so each test has its own results and ledger."""
    dest = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, dest, ignore=shutil.ignore_patterns("results", "*.db*"))
    return dest


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll a condition (test-side only) until it holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def interrupt(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> None:
    """Send a signal to a CLI subprocess."""
    proc.send_signal(sig)

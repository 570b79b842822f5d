"""Pieces several test folders share: emulators on sockets, PostgreSQL schemas, in-process runs.

Each folder's own helpers (``e2e_helpers``, ``security_helpers``, ``inproc`` ...) build on
these; a test imports from its folder's helpers, not from here.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from flora_batch.config import Settings
from flora_batch.emulator import Emulator, EmulatorConfig
from flora_batch.emulator.serve import ServerHandle, start_server
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import BatchResult, run_batch
from flora_batch.worker import Worker

BASE_URL = "http://127.0.0.1/api/v1"  # loopback, so plain-HTTP media URLs are allowed
PG_ENV = "FLORA_BATCH_TEST_PG_URL"
PG_SKIP = f"set {PG_ENV} to a PostgreSQL URL (.ci/run does) to run the PostgreSQL tests"


@contextmanager
def emulators(speed: float) -> Iterator[Callable[..., ServerHandle]]:
    """``start(**EmulatorConfig)`` serves an emulator on 127.0.0.1; all are stopped on exit."""
    handles: list[ServerHandle] = []

    def start(**kw: Any) -> ServerHandle:
        kw.setdefault("speed", speed)
        handle = start_server(EmulatorConfig(**kw), host="127.0.0.1", port=0)
        handles.append(handle)
        return handle

    try:
        yield start
    finally:
        for handle in handles:
            handle.stop()


@contextmanager
def pg_schema(prefix: str = "flora_test") -> Iterator[str]:
    """A URL to a fresh PostgreSQL schema (dropped on exit); skips without the env var."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(PG_SKIP)
    admin = create_engine(
        make_url(base).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


# --- in-process batches ----------------------------------------------------------------


def fast_settings(emu: Emulator, **kw: Any) -> Settings:
    """Settings for quick in-process runs: short polls, no pacing."""
    base: dict[str, Any] = {
        "base_url": BASE_URL,
        "api_key": emu.config.api_key,
        "min_poll": 0.01,
        "max_poll": 0.3,
        "submit_rate": 0.0,
        "timeout": 1.0,
        "history_lag": 0.5,
    }
    return Settings(**{**base, **kw})


class TravelClock:
    """Real time plus an offset that tests move forward (shared by emulator and worker)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def travel(self, seconds: float) -> None:
        """Jump ``seconds`` into the future."""
        self.offset += seconds


class Crasher(httpx.AsyncBaseTransport):
    """Base of the transports that stand in for ``kill -9`` at an exact request.

    ``die()`` cancels the victim (the whole batch task) and never returns, so no code of
    the worker learns anything from that request: only what was already in the ledger
    survives.
    """

    def __init__(self, emu: Emulator) -> None:
        self.inner = httpx.ASGITransport(app=emu.app)
        self.victim: asyncio.Task[Any] | None = None
        self.crashed = False
        self.seen: list[str] = []

    async def die(self) -> None:
        """The process is "dead" from here on."""
        self.crashed = True
        assert self.victim is not None
        self.victim.cancel()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Nothing to close: the emulator lives in the test."""


async def run_once(
    manifest_path: Path,
    settings: Settings,
    transport: httpx.AsyncBaseTransport,
    *,
    clock: Callable[[], float] = time.time,
    on_worker: Callable[[Worker], None] | None = None,
) -> BatchResult:
    """One ``run_batch`` of the manifest (read afresh, as a new process would)."""
    manifest = load_manifest(manifest_path)
    return await run_batch(
        manifest, settings, transport=transport, clock=clock, on_worker=on_worker
    )


async def run_until_crash(
    manifest_path: Path,
    settings: Settings,
    transport: Crasher,
    arm: Callable[[asyncio.Task[Any]], None],
    *,
    clock: Callable[[], float] = time.time,
) -> BatchResult | None:
    """A run that ``arm`` sets up to die; None if it died, else its result."""
    task = asyncio.ensure_future(run_once(manifest_path, settings, transport, clock=clock))
    arm(task)
    try:
        return await task
    except asyncio.CancelledError:
        if not transport.crashed:
            raise
        return None

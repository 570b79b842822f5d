"""Cluster-suite fixtures: a private PostgreSQL schema and emulators on loopback sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cluster_helpers import pg_schema, start_emulator

from flora_batch.emulator import EmulatorConfig
from flora_batch.emulator.serve import ServerHandle


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema of this test's own (skips without FLORA_BATCH_TEST_PG_URL)."""
    with pg_schema() as url:
        yield url


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerHandle]]:
    """Start emulators on 127.0.0.1: ``serve(speed=..., faults=...)``; all stopped after."""
    handles: list[ServerHandle] = []

    def start(**kw: Any) -> ServerHandle:
        kw.setdefault("speed", 100.0)
        handle = start_emulator(EmulatorConfig(**kw))
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()

"""Fault-suite fixtures: emulators on loopback sockets, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flora_batch.emulator import EmulatorConfig
from flora_batch.emulator.serve import ServerHandle, start_server


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerHandle]]:
    """Start emulators on 127.0.0.1: ``serve(speed=..., faults=...)``; all stopped after."""
    handles: list[ServerHandle] = []

    def start(**kw: Any) -> ServerHandle:
        kw.setdefault("speed", 1000.0)
        handle = start_server(EmulatorConfig(**kw), host="127.0.0.1", port=0)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()

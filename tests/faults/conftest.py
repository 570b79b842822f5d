"""Fault-suite fixtures: emulators on loopback sockets, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from support import emulators

from flora_batch.emulator.serve import ServerHandle


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerHandle]]:
    """Start emulators on 127.0.0.1: ``serve(speed=..., faults=...)``; all stopped after."""
    with emulators(1000.0) as start:
        yield start

"""Fixtures for the emulator's own tests: a manual clock, emulator and client factories."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from emulator_helpers import client_for

from flora_batch.emulator import Emulator, EmulatorConfig, ManualClock


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when a test advances it."""
    return ManualClock()


@pytest.fixture
def make_emu(clock: ManualClock) -> Callable[..., Emulator]:
    """Build an emulator on the manual clock; keyword arguments go to ``EmulatorConfig``."""

    def make(**settings: Any) -> Emulator:
        settings.setdefault("clock", clock)
        return Emulator(EmulatorConfig(**settings))

    return make


@pytest.fixture
def emu(make_emu: Callable[..., Emulator]) -> Emulator:
    """A default emulator on the manual clock."""
    return make_emu()


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the default ``emu``."""
    async with client_for(emu) as c:
        yield c

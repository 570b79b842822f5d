"""Fixtures shared by every test folder: a clean environment and retry test mode."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from flora_batch import retrying


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's FLORA_* variables (or a real key), nor a proxy."""
    for name in list(os.environ):
        if name.startswith("FLORA_") and name != "FLORA_BATCH_TEST_PG_URL":
            monkeypatch.delenv(name, raising=False)
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy"):  # loopback only
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def retry_fast() -> Iterator[None]:
    """Zero every retry wait for in-process tests."""
    with retrying.set_testing():
        yield

"""Settings: one frozen object built once (flags > environment > defaults) and passed down.

Nothing below the CLI reads the environment; it reads ``Settings``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .wire import DEFAULT_BASE_URL

DEFAULT_CONCURRENCY = 4  # CONTRACT.md §7: 6 concurrent creates measured fine
DEFAULT_MIN_POLL = 2.0  # never poll one run more often than this (seconds)
DEFAULT_MAX_POLL = 30.0
DEFAULT_SUBMIT_RATE = 5.0  # creates per second at most
DEFAULT_KEY_WINDOW = 2 * 3600.0  # the shortest documented idempotency window (CONTRACT.md §6)
DEFAULT_MAX_DOWNLOAD = 2 * 1024**3
DEFAULT_TIMEOUT = 60.0
DEMO_API_KEY = "sk_test_emulator"

_KEY_RE = re.compile(r"^sk_(live|test)_[A-Za-z0-9_\-]{4,200}$")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a batch run needs to know, resolved."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str = field(default="", repr=False)
    ledger: str | None = None
    results: Path | None = None
    concurrency: int | None = None
    max_cost: float | None = None
    retry_failed: bool = False
    resubmit_unresolved: bool = False
    skip_invalid: bool = False
    min_poll: float = DEFAULT_MIN_POLL
    max_poll: float = DEFAULT_MAX_POLL
    submit_rate: float = DEFAULT_SUBMIT_RATE
    key_window: float = DEFAULT_KEY_WINDOW
    max_runtime: float | None = None
    outage_limit: float = 600.0  # stop cleanly after this long without one good answer
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD
    timeout: float = DEFAULT_TIMEOUT
    verify_deep: bool = False
    progress: bool = True


def check_api_key(key: str | None) -> str:
    """The key, if it looks like a FLORA key; a clear error (that never echoes it) if not."""
    if not key:
        raise ConfigError(
            "FLORA_API_KEY is not set: create a key in FLORA (Settings > API Keys) and "
            "export FLORA_API_KEY=sk_live_..., or try the demo with --demo"
        )
    if not _KEY_RE.match(key.strip()):
        raise ConfigError(
            "FLORA_API_KEY does not look like a FLORA key (expected sk_live_… or sk_test_…); "
            "check for quotes, spaces or a truncated copy"
        )
    return key.strip()

"""Settings: one frozen object built once and passed down.

``cli.settings.resolve`` builds it, ranking flag > environment > config file > manifest >
these defaults.  Nothing below the CLI reads the environment; it reads ``Settings``.
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
#: Seconds of nothing but unknown run statuses before a job is left for a later run
#: (CONTRACT.md §4: not terminal, but bound the wait; real runs take seconds to minutes).
DEFAULT_UNKNOWN_STATUS_LIMIT = 3600.0
DEFAULT_TIMEOUT = 60.0
#: Seconds FLORA may take to list a new run in its run history (``GET /technique-runs``):
#: a run missing from the history this long after our last create that could have made
#: it was not made (reconciliation, docs/design.md).  The contract gives no figure.
DEFAULT_HISTORY_LAG = 30.0
DEMO_API_KEY = "sk_test_emulator"
DEFAULT_UPLOAD_CONCURRENCY = 4  # files uploaded at once
DEFAULT_UPLOAD_TIMEOUT = 600.0  # seconds to wait for one asset to be ready (videos are slow)

_KEY_RE = re.compile(r"^sk_(live|test)_[A-Za-z0-9_\-]{4,200}$")
WORKSPACE_RE = re.compile(r"ws_\S{1,200}")


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
    unknown_status_limit: float = DEFAULT_UNKNOWN_STATUS_LIMIT
    timeout: float = DEFAULT_TIMEOUT
    history_lag: float = DEFAULT_HISTORY_LAG
    verify_deep: bool = False
    progress: bool = True
    # Input files as FLORA assets (uploads.py): the workspace they go to (else the
    # manifest's ``assets.workspace_id``), its library folder, and how uploads run.
    workspace_id: str | None = None
    asset_folder: str | None = None
    upload_concurrency: int = DEFAULT_UPLOAD_CONCURRENCY
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT
    # An S3-compatible endpoint for s3:// results (``submit``/``worker --s3-endpoint``).
    s3_endpoint: str | None = None


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


def check_workspace_id(value: str | None, where: str = "FLORA_WORKSPACE_ID") -> str | None:
    """A workspace id for asset uploads (``ws_...``), or None; a clear error if malformed."""
    if value is None or not value.strip():
        return None
    if not WORKSPACE_RE.fullmatch(value.strip()):
        raise ConfigError(
            f"{where} {value!r} is not a FLORA workspace id: it starts with ws_ "
            "(FLORA: the workspace's settings)"
        )
    return value.strip()

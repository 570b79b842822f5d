"""Every option of every ``flora-batch`` command, declared once.

Each option is a ``Declared``: its flags, its click type and default, its environment
variable and config-file key, and the ``Settings`` field it sets.  A command uses one as
a decorator (``@LEDGER``), or with its own words for ``--help`` (``@LEDGER.saying("…")``)
where the option means something narrower there; nothing else about an option varies by
command.  ``settings.resolve`` reads these declarations to rank flag, environment, config
file and manifest, so a new command gets the same precedence by using them, and
``tests/toolbox/test_toolbox_options.py`` fails if a command declares an option by hand.

Several options describe FLORA's side of the contract where FLORA publishes no figure
(``--timeout``, ``--key-window``, ``--history-lag``): their defaults are the contract's
(CONTRACT.md §6, §8) or, where it is silent, cautious; docs/design.md says what each
guarantees.  ``flora-batch emulator`` is another program and keeps its own options.

Light to import (``--help`` reads this module): click and the defaults, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import click

from ..config import (
    DEFAULT_HISTORY_LAG,
    DEFAULT_KEY_WINDOW,
    DEFAULT_MAX_POLL,
    DEFAULT_MIN_POLL,
    DEFAULT_SUBMIT_RATE,
    DEFAULT_TIMEOUT,
)
from ..wire import DEFAULT_BASE_URL

Decorator = Callable[[Any], Any]
MIB = 1024 * 1024


class DeclaredOption(click.Option):
    """A click option made from a ``Declared`` (which it keeps, for the tests)."""

    def __init__(self, *args: Any, declared: Declared, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.declared = declared


@dataclass(frozen=True)
class Declared:
    """One option: how click parses it and where ``settings.resolve`` looks for it.

    ``env`` is read only by commands that take the option, as is the config file's key
    (the option's name) when ``config`` is set; ``setting`` names the ``Settings`` field
    the option fills, and ``convert`` turns the option's value into that field's.
    """

    decls: tuple[str, ...]
    help: str
    env: str | None = None
    config: bool = False
    setting: str | None = None
    convert: Callable[[Any], Any] | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The parameter's name, as click derives it from the flags."""
        named = [d for d in self.decls if d.isidentifier()]
        if named:
            return named[0]
        longest = max(self.decls, key=lambda d: (d.startswith("--"), len(d)))
        return longest.lstrip("-").replace("-", "_")

    def __call__(self, fn: Any) -> Any:
        """Add the option to a command, with its usual help."""
        return self.saying(self.help)(fn)

    def saying(self, help: str) -> Decorator:
        """The option with this command's words for ``--help``."""
        return click.option(*self.decls, cls=DeclaredOption, declared=self, help=help, **self.attrs)


def _opt(
    *decls: str,
    help: str,
    env: str | None = None,
    config: bool = False,
    setting: str | None = None,
    convert: Callable[[Any], Any] | None = None,
    **attrs: Any,
) -> Declared:
    return Declared(decls, help, env, config, setting, convert, MappingProxyType(attrs))


# --- the whole program (flora-batch's own group) -------------------------------------------

VERBOSE = _opt("-v", "--verbose", count=True, help="More detail (-vv for debugging).")
QUIET = _opt("-q", "--quiet", is_flag=True, help="Only warnings, errors and the summary.")
LOG_FORMAT = _opt(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per log line (cron, log shippers).",
)

# --- where: FLORA, the ledger, the results, the workspace ----------------------------------

BASE_URL = _opt(
    "--base-url",
    env="FLORA_BASE_URL",
    config=True,
    setting="base_url",
    default=DEFAULT_BASE_URL,
    show_default=True,
    help="FLORA API base URL (env FLORA_BASE_URL).",
)
LEDGER = _opt(
    "--ledger",
    env="FLORA_LEDGER",
    config=True,
    setting="ledger",
    help="Ledger: a SQLite file path or a SQLAlchemy URL "
    "(env FLORA_LEDGER; default: <name>.ledger.db beside the manifest).",
)
RESULTS = _opt(
    "--results",
    setting="results",
    convert=lambda text: None if "://" in text else Path(text),  # s3://: submit's own
    type=click.Path(),  # text as typed: a folder, or (submit) an s3:// URL
    help="Results folder (default: the manifest's output.dir).",
)
WORKSPACE_ID = _opt(
    "--workspace-id",
    env="FLORA_WORKSPACE_ID",
    config=True,
    setting="workspace_id",
    help="Workspace (ws_…) that local input files are uploaded to "
    "(env FLORA_WORKSPACE_ID; default: the manifest's assets.workspace_id).",
)
ASSET_FOLDER = _opt(
    "--asset-folder",
    env="FLORA_ASSET_FOLDER",
    config=True,
    setting="asset_folder",
    help="Workspace library folder for uploaded files (default: assets.folder).",
)
S3_ENDPOINT = _opt(
    "--s3-endpoint",
    env="FLORA_BATCH_S3_ENDPOINT",
    setting="s3_endpoint",
    metavar="URL",
    help="S3-compatible endpoint for s3:// results (env FLORA_BATCH_S3_ENDPOINT).",
)

# --- what: the rows and how to read them ---------------------------------------------------

TECHNIQUE = _opt(
    "--technique",
    help="With a CSV/XLSX/JSONL/Parquet instead of a manifest: the technique slug.",
)
INPUT = _opt(
    "--input",
    "inputs",
    multiple=True,
    metavar="ID=COLUMN",
    help="With a rows file: map a technique input to a column (or a {template}).",
)
SKIP_INVALID = _opt(
    "--skip-invalid",
    setting="skip_invalid",
    is_flag=True,
    help="Run the valid rows; list the invalid ones.",
)
DEMO = _opt("--demo", is_flag=True, help="Run against a local FLORA emulator (no key, no network).")
JSON = _opt("--json", "as_json", is_flag=True, help="Print JSON.")
BATCH = _opt("--batch", help="With --ledger: only this batch (default: every batch).")

# --- how much and how fast ----------------------------------------------------------------

CONCURRENCY = _opt(
    "--concurrency",
    config=True,
    setting="concurrency",
    type=click.IntRange(1, 256),
    help="Runs in flight at most (default: manifest, else 4).",
)
MAX_COST = _opt(
    "--max-cost",
    setting="max_cost",
    type=click.FloatRange(min=0),
    help="Hard cap on money this batch may spend.",
)
RATE = _opt(
    "--rate",
    "submit_rate",
    setting="submit_rate",
    type=click.FloatRange(min=0),
    default=DEFAULT_SUBMIT_RATE,
    show_default=True,
    help="Creates per second at most (0: unpaced).",
)
RETRY_FAILED = _opt(
    "--retry-failed",
    setting="retry_failed",
    is_flag=True,
    help="Buy again the failed jobs FLORA calls retryable (new keys).",
)
RESUBMIT_UNRESOLVED = _opt(
    "--resubmit-unresolved",
    setting="resubmit_unresolved",
    is_flag=True,
    help="Buy again jobs whose first run could not be identified (may pay twice: check first).",
)
MAX_RUNTIME = _opt(
    "--max-runtime",
    setting="max_runtime",
    type=float,
    metavar="SECONDS",
    help="Stop cleanly after this long (cron).",
)
MIN_POLL = _opt(
    "--min-poll",
    setting="min_poll",
    type=float,
    default=DEFAULT_MIN_POLL,
    show_default=True,
    help="Seconds between polls of one run at the least.",
)
MAX_POLL = _opt(
    "--max-poll",
    setting="max_poll",
    type=float,
    default=DEFAULT_MAX_POLL,
    show_default=True,
    help="Seconds between polls at the most (and before a stuck job is tried again).",
)
VERIFY = _opt(
    "--verify",
    "verify_deep",
    setting="verify_deep",
    is_flag=True,
    help="Re-hash every finished output on disk.",
)
MAX_DOWNLOAD_MB = _opt(
    "--max-download-mb",
    setting="max_download_bytes",
    convert=lambda mib: mib * MIB,
    type=click.IntRange(min=1),
    metavar="MIB",
    help="Refuse any output file larger than this many MiB (default: 2048).",
)

# --- what flora-batch assumes of FLORA where it publishes no figure ------------------------

TIMEOUT = _opt(
    "--timeout",
    setting="timeout",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="How long a request to FLORA may take.  A create whose answer was lost is "
    "sent again (with its key) only this long after it left.",
)
KEY_WINDOW = _opt(
    "--key-window",
    setting="key_window",
    type=click.FloatRange(min=1),
    default=DEFAULT_KEY_WINDOW,
    show_default=True,
    metavar="SECONDS",
    help="How long FLORA remembers an idempotency key (2 h documented).  Past it, a "
    "create is never repeated: its run is looked for in the run history instead.",
)
HISTORY_LAG = _opt(
    "--history-lag",
    setting="history_lag",
    type=click.FloatRange(min=0),
    default=DEFAULT_HISTORY_LAG,
    show_default=True,
    metavar="SECONDS",
    help="How long FLORA may take to list a new run in its run history.",
)

# --- one command's own ---------------------------------------------------------------------

ROWS = _opt("--rows", "rows_name", metavar="FILE", help="The CSV template (default SLUG.csv).")
DIR = _opt(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder to write both files into.",
)
WATCH = _opt("--watch", is_flag=True, help="Refresh until every job is finished (or Ctrl-C).")
INTERVAL = _opt(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between --watch refreshes.",
)
OUT = _opt(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the report (default: <results>/_report).",
)
LEASE = _opt(
    "--lease",
    type=click.FloatRange(min=1),
    default=30.0,  # cluster.DEFAULT_LEASE (tests/toolbox/test_toolbox_options.py)
    show_default=True,
    metavar="SECONDS",
    help="How long a claim lasts without a heartbeat; a dead worker's jobs wait this long.",
)
EXIT_WHEN_IDLE = _opt(
    "--exit-when-idle", is_flag=True, help="Exit when there is nothing to claim (cron fleets)."
)
WORKER_ID = _opt("--worker-id", help="Name shown in status (default: host-pid-random).")
IDLE_POLL = _opt(
    "--idle-poll",
    type=click.FloatRange(min=0.05),
    default=2.0,  # cluster.DEFAULT_IDLE_POLL (tests/toolbox/test_toolbox_options.py)
    show_default=True,
    metavar="SECONDS",
    help="Seconds between looks for work while there is none.",
)

#: Every declared option by its parameter name (``settings.resolve`` walks it).
OPTIONS: Mapping[str, Declared] = MappingProxyType(
    {o.name: o for o in list(globals().values()) if isinstance(o, Declared)}
)


def contract_options(fn: Any) -> Any:
    """``--timeout``, ``--key-window`` and ``--history-lag``: what FLORA does not publish."""
    return TIMEOUT(KEY_WINDOW(HISTORY_LAG(fn)))

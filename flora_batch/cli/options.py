"""Options several commands share, declared once (``run`` and ``worker`` take these).

They describe FLORA's side of the contract where FLORA publishes no figure: how long a
request may take, how long an idempotency key is remembered, how soon a new run shows
in the run history.  The defaults are the contract's (CONTRACT.md §6, §8) or, where it
is silent, cautious; docs/design.md says what each one guarantees.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import (
    DEFAULT_HISTORY_LAG,
    DEFAULT_KEY_WINDOW,
    DEFAULT_TIMEOUT,
    Settings,
    check_api_key,
)
from ..errors import UsageError

if TYPE_CHECKING:
    from ..manifest import Manifest

Decorator = Callable[[Any], Any]


def contract_options(fn: Any) -> Any:
    """``--timeout``, ``--key-window`` and ``--history-lag``."""
    options: list[Decorator] = [
        click.option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            default=DEFAULT_TIMEOUT,
            show_default=True,
            metavar="SECONDS",
            help="How long a request to FLORA may take.  A create whose answer was lost is "
            "sent again (with its key) only this long after it left.",
        ),
        click.option(
            "--key-window",
            type=click.FloatRange(min=1),
            default=DEFAULT_KEY_WINDOW,
            show_default=True,
            metavar="SECONDS",
            help="How long FLORA remembers an idempotency key (2 h documented).  Past it, a "
            "create is never repeated: its run is looked for in the run history instead.",
        ),
        click.option(
            "--history-lag",
            type=click.FloatRange(min=0),
            default=DEFAULT_HISTORY_LAG,
            show_default=True,
            metavar="SECONDS",
            help="How long FLORA may take to list a new run in its run history.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def load_manifest_arg(
    source: Path, technique: str | None, inputs: tuple[str, ...]
) -> Manifest:
    """The manifest a command was given: a YAML manifest, or a rows file with
    ``--technique`` and ``--input`` pairs (quick mode).

    Raises:
        UsageError: a manifest with ``--technique``/``--input``, or a rows file without.
    """
    from ..manifest import load_manifest, manifest_from_rows

    if source.suffix.lower() in (".yaml", ".yml"):
        if technique or inputs:
            raise UsageError("--technique/--input are for a rows file; a manifest names its own")
        return load_manifest(source)
    if not technique:
        raise UsageError(
            f"{source} is not a manifest (.yaml): give --technique SLUG and --input ID=COLUMN"
        )
    mapping: dict[str, str] = {}
    for item in inputs:
        if "=" not in item:
            raise UsageError(f"--input {item!r}: expected ID=COLUMN, e.g. product=image_url")
        key, _, value = item.partition("=")
        mapping[key.strip()] = value.strip()
    return manifest_from_rows(source, technique, mapping)


def settings_from(base_url: str, api_key: str | None, **kw: Any) -> Settings:
    """``Settings`` from a command's options (None: the default), the key checked."""
    clean = {k: v for k, v in kw.items() if v is not None}
    return Settings(base_url=base_url, api_key=check_api_key(api_key), **clean)

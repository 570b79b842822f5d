"""Options several commands share, declared once (``run`` and ``worker`` take these).

They describe FLORA's side of the contract where FLORA publishes no figure: how long a
request may take, how long an idempotency key is remembered, how soon a new run shows
in the run history.  The defaults are the contract's (CONTRACT.md §6, §8) or, where it
is silent, cautious; docs/design.md says what each one guarantees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .config import DEFAULT_HISTORY_LAG, DEFAULT_KEY_WINDOW, DEFAULT_TIMEOUT

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

"""flora-batch: push spreadsheet rows through FLORA techniques without paying twice.

The public API, for scripts and tests (the CLI is one user of it)::

    from flora_batch import Settings, load_manifest, run_batch

    manifest = load_manifest("spring.yaml")
    result = asyncio.run(run_batch(manifest, Settings(api_key="sk_live_...")))

Each name is imported when it is first used (PEP 562), so ``import flora_batch`` and the
CLI's ``--help`` stay light; a type checker sees them all (``TYPE_CHECKING``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:
    from .config import Settings
    from .errors import FloraError
    from .ledger import Ledger
    from .manifest import Manifest, load_manifest
    from .pipeline import BatchResult, Prepared, plan_batch, run_batch
    from .plan import Plan
    from .remote import FloraClient

#: Where each public name lives.
_PUBLIC = {
    "BatchResult": "pipeline",
    "FloraClient": "remote",
    "FloraError": "errors",
    "Ledger": "ledger",
    "Manifest": "manifest",
    "Plan": "plan",
    "Prepared": "pipeline",
    "Settings": "config",
    "load_manifest": "manifest",
    "plan_batch": "pipeline",
    "run_batch": "pipeline",
}

__all__ = [
    "BatchResult",
    "FloraClient",
    "FloraError",
    "Ledger",
    "Manifest",
    "Plan",
    "Prepared",
    "Settings",
    "load_manifest",
    "plan_batch",
    "run_batch",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'flora_batch' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)

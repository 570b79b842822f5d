"""The package's public face: what ``from flora_batch import ...`` offers, pinned."""

from __future__ import annotations

import subprocess
import sys

import flora_batch


def test_the_public_api_is_pinned() -> None:
    """Adding or removing a public name is a decision: this list changes with it."""
    assert flora_batch.__all__ == [
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


def test_every_public_name_resolves_to_the_thing_itself() -> None:
    """Each name is the object its module defines, not a copy; ``__all__`` is ``_PUBLIC``."""
    assert sorted(flora_batch._PUBLIC) == flora_batch.__all__
    from flora_batch.config import Settings
    from flora_batch.pipeline import run_batch
    from flora_batch.remote.client import FloraClient

    assert flora_batch.Settings is Settings and flora_batch.run_batch is run_batch
    assert flora_batch.FloraClient is FloraClient
    for name in flora_batch.__all__:
        assert getattr(flora_batch, name) is not None


def test_importing_the_package_imports_nothing_heavy() -> None:
    """``import flora_batch`` loads neither the ledger's SQLAlchemy nor httpx (the CLI's
    ``--help`` starts from it)."""
    heavy = "('sqlalchemy', 'httpx')"
    code = f"import sys, flora_batch; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Upload fixtures: the end-to-end helpers (emulator on a socket, the CLI as a subprocess)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ledger"))

from e2e_helpers import emulator, run_cli

__all__ = ["emulator", "run_cli"]

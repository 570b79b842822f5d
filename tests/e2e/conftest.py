"""End-to-end fixtures (defined in e2e_helpers, so test modules can import the helpers too)."""

from e2e_helpers import emulator, run_cli, workdir

__all__ = ["emulator", "run_cli", "workdir"]

"""Toolbox fixtures: the end-to-end helpers (emulator on a socket, the CLI as a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_helpers import FAST, cli_cmd, emulator, run_cli, workdir
from toolbox_helpers import env, write_batch

from flora_batch.emulator import EmulatorConfig
from flora_batch.emulator.serve import start_server

__all__ = ["emulator", "run_cli", "showcase", "workdir"]


@dataclass(frozen=True)
class Showcase:
    """A finished batch with images, text and video outputs, two failed jobs, and its report."""

    manifest: Path
    results: Path
    report: Path
    env: dict[str, str]


@pytest.fixture(scope="session")
def showcase(tmp_path_factory: pytest.TempPathFactory) -> Showcase:
    """Six products through studio-shot, palette-pull and product-motion; row 1's last two fail."""
    folder = tmp_path_factory.mktemp("showcase")
    manifest = write_batch(folder, techniques="showcase")
    with start_server(EmulatorConfig(speed=2000.0), host="127.0.0.1", port=0) as server:
        server.emulator.inject("run_failure", times=2, code="safety_blocked")
        ran = subprocess.run(cli_cmd("run", str(manifest), *FAST, "--concurrency", "1"),
                             env=env(folder, server), capture_output=True, text=True, timeout=300)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    made = subprocess.run(cli_cmd("report", str(manifest)), env=env(folder),
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    return Showcase(manifest, folder / "results", folder / "results" / "_report", env(folder))

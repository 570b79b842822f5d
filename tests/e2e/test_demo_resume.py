"""``run --demo`` keeps its emulator's state beside the ledger, so a re-run after ``kill -9``
finds the runs the first process bought and finishes without buying any twice."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from e2e_helpers import cli_cmd, cli_env

from flora_batch.emulator import EmulatorConfig, EmulatorState

DEMO_ROWS = 6


def _runs_in(path: Path) -> int:
    """How many runs the saved emulator state holds (0 while there is no file yet)."""
    try:
        return len(json.loads(path.read_text())["runs"])
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_demo_killed_mid_batch_resumes_and_pays_once(workdir: Path) -> None:
    """SIGKILL while runs are in flight; the same command then finishes every job, and the
    persisted emulator state shows each key charged exactly once."""
    state = workdir / "demo.ledger.db.demo-emulator.json"
    cmd = cli_cmd("run", str(workdir / "demo.yaml"), "--demo", "--min-poll", "0.2")
    proc = subprocess.Popen(
        cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and _runs_in(state) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the batch ended before it was killed"
    bought = EmulatorState(EmulatorConfig(state_file=state))
    assert 2 <= len(bought.runs) <= DEMO_ROWS
    assert any(r.status_at(bought.now()) != "completed" for r in bought.runs.values()) or (
        len(bought.runs) < DEMO_ROWS
    )

    again = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{DEMO_ROWS} of {DEMO_ROWS} jobs done" in again.stdout
    books = EmulatorState(EmulatorConfig(state_file=state))
    assert len(books.runs) == DEMO_ROWS
    assert sorted(books.charges_by_key().values()) == [1] * DEMO_ROWS
    assert len(list((workdir / "results" / "demo").rglob("*.png"))) == DEMO_ROWS


def test_plan_demo_writes_no_emulator_state(run_cli, workdir: Path) -> None:
    """``plan --demo`` buys nothing, so it leaves no emulator state file behind."""
    res = run_cli("plan", str(workdir / "demo.yaml"), "--demo", env=cli_env())
    assert res.code == 0, res.text
    assert not list(workdir.glob("*.demo-emulator.json"))

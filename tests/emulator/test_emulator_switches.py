"""The switches that make the emulator as hard as the contract allows: off by default,
checked at construction, and each a flag of ``flora-batch emulator``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from flora_batch.emulator import EmulatorConfig
from flora_batch.emulator.config import HARD_SWITCHES
from flora_batch.emulator.serve import emulator_command


def test_every_switch_is_off_by_default() -> None:
    """A default config changes nothing: no skew, bill = quote, merged creates, no
    neighbours, no delay, no cap, the usual duplicate answer, plain media, no file."""
    config = EmulatorConfig()
    assert config.hard_switches() == {}
    assert (config.clock_skew, config.bill_factor, config.quote) == (0.0, 1.0, "exact")
    assert (config.create_latency, config.merge_concurrent_creates) == (0.0, True)
    assert (config.other_clients, config.other_clients_spread, config.other_clients_burst) == (
        0.0,
        1.0,
        1,
    )
    assert (config.history_delay, config.history_page_cap, config.duplicate_status) == (
        0.0,
        None,
        None,
    )
    assert (config.media_quirks, config.state_file) == (False, None)


@pytest.mark.parametrize(
    "settings",
    [
        {"bill_factor": 0},
        {"bill_factor": -2.0},
        {"bill_factor": float("inf")},
        {"quote": "free"},
        {"create_latency": -0.1},
        {"other_clients": 1.5},
        {"other_clients_spread": -1.0},
        {"other_clients_burst": 0},
        {"history_delay": -1.0},
        {"history_page_cap": 0},
        {"duplicate_status": 409},
        {"clock_skew": float("nan")},
    ],
)
def test_impossible_switch_values_are_refused(settings: dict[str, Any]) -> None:
    """Values the emulator cannot honour fail at construction, naming the field."""
    with pytest.raises(ValueError, match=next(iter(settings))):
        EmulatorConfig(**settings)


def test_negative_clock_skew_is_allowed() -> None:
    """A server clock may run behind as well as ahead."""
    assert EmulatorConfig(clock_skew=-30).hard_switches() == {"clock_skew": -30}


def test_every_switch_has_a_documented_flag() -> None:
    """``flora-batch emulator --help`` lists a flag for each switch and for the state file."""
    text = CliRunner().invoke(emulator_command, ["--help"], terminal_width=200).output
    for name in (*HARD_SWITCHES, "state_file"):
        assert f"--{name.replace('_', '-')}" in text, name
    assert "--no-merge-concurrent-creates" in text


def test_bad_flag_values_are_usage_errors() -> None:
    """Out-of-range flags exit 2 with click's message, not a traceback."""
    for args in (["--bill-factor", "0"], ["--duplicate-status", "409"], ["--other-clients", "2"]):
        result = CliRunner().invoke(emulator_command, args)
        assert result.exit_code == 2, (args, result.output)


def test_the_flags_reach_the_running_emulator(tmp_path: Path) -> None:
    """Every flag set on the command line shows in the banner and changes what is served."""
    state = tmp_path / "state.json"
    flags = [
        "--clock-skew", "-5", "--bill-factor", "2", "--quote", "missing",
        "--create-latency", "0.01", "--no-merge-concurrent-creates", "--other-clients", "1",
        "--other-clients-spread", "0", "--other-clients-burst", "2", "--history-delay", "0",
        "--history-page-cap", "1", "--duplicate-status", "422", "--media-quirks",
        "--state-file", str(state),
    ]  # fmt: skip
    command = [sys.executable, "-m", "flora_batch.emulator", "--port", "0", *flags]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        banner = _read_banner(proc)
        base_url = banner[0].rsplit(" ", 1)[-1]
        headers = {"Authorization": "Bearer sk_test_emulator"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=5) as c:
            technique = c.get("/techniques/icon-pack").json()
            body = {"inputs": [{"id": "prompt", "type": "text", "value": "x"}], "mode": "async"}
            first = c.post("/techniques/icon-pack/runs", json={**body, "idempotency_key": "k"})
            again = c.post("/techniques/icon-pack/runs", json={**body, "idempotency_key": "k"})
            page = c.get("/technique-runs", params={"limit": 100}).json()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    switches = next(line for line in banner if line.startswith("hard switches:"))
    assert switches == (
        "hard switches: clock_skew=-5.0 bill_factor=2.0 quote=missing create_latency=0.01 "
        "merge_concurrent_creates=False other_clients=1.0 other_clients_spread=0.0 "
        "other_clients_burst=2 history_page_cap=1 duplicate_status=422 media_quirks=True"
    )
    assert any(str(state) in line for line in banner)
    assert "run_cost" not in technique and "charged_cost" not in first.json()
    assert again.status_code == 422
    assert len(page["technique_runs"]) == 1 and page["meta"]["next_cursor"]
    assert state.exists()


def _read_banner(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Press Ctrl-C"):
        line = proc.stdout.readline()
        assert line, f"command exited early: {lines}"
        lines.append(line.rstrip("\n"))
    return lines

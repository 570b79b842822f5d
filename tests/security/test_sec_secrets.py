"""Secrets: a distinctive API key, accepted by the emulator, must never appear in what
flora-batch prints, logs (``-vv --log-format json``), stores (the ledger and its -wal,
results, reports) or shows in the process list, whether the batch succeeds or fails.

The key travels only in ``FLORA_API_KEY`` (or a private config file) and the
``Authorization`` header sent to the API base URL; ``/proc/<pid>/environ`` is readable
by the same user only, which is the boundary SECURITY.md documents.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from security_helpers import (
    FAST,
    assert_no_traceback,
    cli_cmd,
    cli_env,
    products,
    requests,
    run_cli,
    write_batch,
)

CANARY = "sk_test_SECRETCANARY123456"
SECRET = CANARY.removeprefix("sk_test_")  # the part that identifies the key


def grep_tree(folder: Path) -> list[Path]:
    """Every file under ``folder`` whose bytes hold the key (plain or UTF-16)."""
    needles = [SECRET.encode(), SECRET.encode("utf-16-le")]
    return [
        p
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink() and any(n in p.read_bytes() for n in needles)
    ]


def process_list() -> str:
    """Every process's whole command line, as ``ps -eo args`` shows it (-ww: uncut)."""
    return subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout


def run_watched(
    args: list[str], env: dict[str, str], folder: Path
) -> tuple[int, str, str, list[str]]:
    """Run the CLI; while it is in flight, snapshot the process list and every SQLite
    -wal file under ``folder`` (they are checkpointed away when the ledger closes)."""
    proc = subprocess.Popen(
        cli_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    snapshots = []
    while proc.poll() is None:
        snapshots.append(process_list())
        snapshots += ["WAL:" + w.read_bytes().decode("latin-1") for w in folder.rglob("*-wal")]
        time.sleep(0.1)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err, snapshots


def assert_no_secret(*texts: str, folder: Path) -> None:
    """The key is in none of ``texts`` and in no file under ``folder``."""
    for text in texts:
        assert SECRET not in text, text
    assert grep_tree(folder) == []


def test_key_never_leaks_from_a_verbose_batch(emulator: Any, tmp_path: Path) -> None:
    """A full batch with -vv and JSON logs, then status and report: the key is nowhere."""
    server = emulator(api_key=CANARY, speed=100.0)  # runs of 0.3 s: time to look at ps
    manifest = write_batch(tmp_path / "b", products(6))
    env = cli_env(server, home=tmp_path)
    args = ["-vv", "--log-format", "json", "run", str(manifest), *FAST]
    code, out, err, snapshots = run_watched(args, env, tmp_path)
    assert code == 0, out + err
    assert '"level": "debug"' in err  # the debug logs were on
    assert any(str(manifest) in s for s in snapshots), "ps never ran while the batch did"
    assert any(s.startswith("WAL:") and len(s) > 4096 for s in snapshots), "no -wal was read"
    status = run_cli("-vv", "status", str(manifest), env=env)
    report = run_cli("-vv", "report", str(manifest), env=env)
    assert status.code == 0 and report.code == 0, status.text + report.text
    assert (tmp_path / "b" / "results" / "_report" / "results.csv").is_file()
    assert_no_secret(out, err, status.text, report.text, *snapshots, folder=tmp_path)


@pytest.mark.parametrize("failure", ["runs_fail", "key_refused", "ledger_broken"])
def test_key_never_leaks_from_a_failing_batch(emulator: Any, tmp_path: Path, failure: str) -> None:
    """Failed runs, a refused key, a broken ledger: -vv output and files hold no key."""
    manifest = write_batch(tmp_path / "b", products(3))
    server = emulator(
        api_key="sk_test_someoneelse" if failure == "key_refused" else CANARY,
        faults=_faults(run_failure=1.0 if failure == "runs_fail" else 0.0),
    )
    if failure == "ledger_broken":
        (tmp_path / "b" / "b.ledger.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    expected = {"runs_fail": 1, "key_refused": 3, "ledger_broken": 7}[failure]
    env = {**cli_env(server, home=tmp_path), "FLORA_API_KEY": CANARY}
    code, out, err, snapshots = run_watched(["-vv", "run", str(manifest), *FAST], env, tmp_path)
    assert code == expected, out + err
    assert_no_traceback(_result(code, out, err))
    assert_no_secret(out, err, *snapshots, folder=tmp_path)


@pytest.mark.parametrize(
    "key",
    [
        f"{CANARY} extra",
        f"{CANARY}\nX-Injected: 1",
        f"'{CANARY}'",
        f"Bearer {CANARY}",
        SECRET,
        "sk_live_",
    ],
)
def test_malformed_key_is_refused_before_any_request(
    emulator: Any, tmp_path: Path, key: str
) -> None:
    """A malformed key: exit 2, a message saying what is wrong, no echo, no request at all."""
    server = emulator(api_key=CANARY)
    manifest = write_batch(tmp_path / "b", products(2))
    res = run_cli(
        "-vv",
        "run",
        str(manifest),
        *FAST,
        env={**cli_env(server, home=tmp_path), "FLORA_API_KEY": key},
    )
    assert res.code == 2, res.text
    assert "does not look like a FLORA key" in res.err
    assert SECRET not in res.text
    assert requests(server) == 0


def test_key_in_a_readable_config_file_is_refused_unread(emulator: Any, tmp_path: Path) -> None:
    """An api_key in a group/world-readable config file: exit 2 and the key is not echoed."""
    server = emulator(api_key=CANARY)
    config = tmp_path / ".config" / "flora-batch" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'api_key = "{CANARY}"\n')
    config.chmod(0o644)
    env = cli_env(server, home=tmp_path)
    del env["FLORA_API_KEY"]
    res = run_cli("run", str(write_batch(tmp_path / "b", products(1))), *FAST, env=env)
    assert res.code == 2 and "chmod 600" in res.err, res.text
    assert SECRET not in res.text and requests(server) == 0


def _faults(**plan: Any) -> Any:
    from flora_batch.emulator import FaultPlan

    return FaultPlan(seed=3, **plan)


def _result(code: int, out: str, err: str) -> Any:
    from security_helpers import CliResult

    return CliResult(code, out, err)

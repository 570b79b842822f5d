"""Help and docs: every command has help with a worked example; docs/cli.md matches `--help`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from e2e_helpers import FAST, REPO
from toolbox_helpers import env, write_batch

from flora_batch.cli.docs import render, walk
from flora_batch.cli.main import cli

COMMANDS = [path for path, _ in walk(cli, "flora-batch")]


def test_docs_cli_md_matches_help():
    """docs/cli.md is exactly what `python -m flora_batch.cli.docs` prints (run `make docs`)."""
    assert (REPO / "docs" / "cli.md").read_text() == render(), "docs/cli.md drifted: make docs"


@pytest.mark.parametrize("path", COMMANDS[1:])
def test_every_command_has_help_with_an_example(path: str):
    """Each command has a docstring and an epilog with a runnable `flora-batch` example."""
    ctx = dict(walk(cli, "flora-batch"))[path]
    command = ctx.command
    assert command.help and command.help.strip()
    assert command.epilog and "Example" in command.epilog, path
    assert re.search(r"^\s+flora-batch \S+", command.epilog, re.M), path


def test_help_runs_for_the_toolbox_commands(run_cli, tmp_path: Path):
    """`--help` works from the real command line and shows the example."""
    for name in ("init", "status", "report", "techniques"):
        res = run_cli(name, "--help", env=env(tmp_path))
        assert res.code == 0 and "Example" in res.out, res.text


def test_only_the_emulator_command_loads_the_emulator(run_cli, tmp_path: Path):
    """`flora-batch emulator` is listed and works; the other commands start without it."""
    res = run_cli("emulator", "--help", env=env(tmp_path))
    assert res.code == 0 and "--speed" in res.out, res.text
    assert "emulator" in run_cli("--help", env=env(tmp_path)).out
    probe = (
        "import sys; from flora_batch.cli import cli; "
        "print(sorted(m for m in sys.modules if m.startswith('flora_batch.emulator')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_log_format_json_and_verbosity(emulator, run_cli, tmp_path: Path):
    """-v --log-format json logs JSON lines on stderr; -q keeps the progress line quiet."""
    server = emulator()
    manifest = write_batch(tmp_path / "b")
    loud = run_cli("-v", "--log-format", "json", "run", str(manifest), *FAST,
                   env=env(tmp_path, server))
    assert loud.code == 0, loud.text
    logs = [json.loads(line) for line in loud.err.splitlines() if line.startswith("{")]
    assert logs and {"time", "level", "logger", "message"} <= set(logs[0])
    assert any(entry["level"] == "info" for entry in logs)
    quiet = run_cli("-q", "run", str(write_batch(tmp_path / "c")), *FAST, env=env(tmp_path, server))
    assert quiet.code == 0 and "[shop]" not in quiet.text and "6 of 6 jobs done" in quiet.out
    assert not [line for line in quiet.err.splitlines() if " INFO " in line]


def test_readme_walkthrough_runs_verbatim(tmp_path: Path):
    """The README's init → plan → run → status → report commands work as written."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## From a technique to a report: init → plan → run → status → ")[1]
    script = re.search(r"```bash\n(.*?)```", section, re.S)
    assert script is not None
    bin_dir = Path(os.sys.executable).parent
    user = env(tmp_path, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script.group(1)], cwd=tmp_path,
                          env=user, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = tmp_path / "flora-tryout" / "results" / "studio-shot" / "_report"
    assert {"index.html", "results.csv", "results.xlsx", "results.jsonl"} <= {
        p.name for p in report.iterdir()}
    assert "3 of 3 jobs done" in done.stdout


def test_click_context_settings_reach_subcommands():
    """-h works like --help on subcommands too (context settings are inherited)."""
    result = CliRunner().invoke(cli, ["status", "-h"])
    assert result.exit_code == 0 and "Usage:" in result.output

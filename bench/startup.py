"""Start-up cost: CPU of ``flora-batch --help``, ``--version`` and ``run --help`` against
``python -c "import click, httpx"`` in the same environment (docs/performance.md).

    python -m bench.startup                      # this interpreter's environment
    python -m bench.startup --python /tmp/v/bin/python --runs 31

Each command is a fresh process; its CPU is the child's user + system time from
``wait4`` (start-up, imports, the help text, exit), so another process's load on the
machine does not count, only its cache effects.  Children run as a user would: without
``PYTHONPATH`` and from ``/``, so they measure the environment's installed flora-batch.
Rounds are interleaved (every command once per round, the order rotated) and the figures
are medians; the ratio is each command's median over the baseline's.  The target is a
ratio of at most 1.0: nothing heavy is imported until a command needs it
(tests/toolbox/test_toolbox_startup.py checks which modules, deterministically).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

BASELINE = "import click, httpx"
COMMANDS = {
    "flora-batch --help": ["--help"],
    "flora-batch --version": ["--version"],
    "flora-batch run --help": ["run", "--help"],
}
TARGET = 1.0


def child_cpu(argv: list[str], env: dict[str, str]) -> float:
    """User + system CPU seconds of one run of ``argv`` (its output discarded)."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=os.sep
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def argvs(python: Path) -> dict[str, list[str]]:
    """Every command line measured, the baseline first; the console script if installed."""
    script = python.parent / "flora-batch"
    entry = [str(script)] if script.exists() else [str(python), "-m", "flora_batch"]
    out = {f'python -c "{BASELINE}"': [str(python), "-c", BASELINE]}
    out.update({name: entry + args for name, args in COMMANDS.items()})
    return out


def measure(python: Path, runs: int) -> dict[str, list[float]]:
    """CPU seconds per command, ``runs`` interleaved rounds with the order rotated."""
    lines = argvs(python)
    # A user's environment: no FLORA_* settings, no PYTHONPATH (the venv's own packages),
    # and the root folder as working directory (no checkout shadows the installed code).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLORA_", "PYTHONPATH"))}
    for argv in lines.values():  # warm the page cache and the .pyc files once
        child_cpu(argv, env)
    times: dict[str, list[float]] = {name: [] for name in lines}
    names = list(lines)
    for n in range(runs):
        for name in names[n % len(names) :] + names[: n % len(names)]:
            times[name].append(child_cpu(lines[name], env))
    return times


def report(times: dict[str, list[float]]) -> str:
    """A Markdown table: median CPU per command and its ratio to the baseline."""
    base_name = next(iter(times))
    base = statistics.median(times[base_name])
    rows = ["| Command | CPU, median | Ratio to the baseline | Target |", "|---|---|---|---|"]
    for name, samples in times.items():
        cpu = statistics.median(samples)
        if name == base_name:
            rows.append(f"| `{name}` (baseline) | {cpu * 1000:.0f} ms | 1.00× | |")
            continue
        ok = "✓" if cpu / base <= TARGET else "✗"
        rows.append(
            f"| `{name}` | {cpu * 1000:.0f} ms | {cpu / base:.2f}× | ≤ {TARGET:.1f}× {ok} |"
        )
    return "\n".join(rows)


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=Path, default=Path(sys.executable))
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    times = measure(args.python, args.runs)
    print(f"{args.python} ({args.runs} runs each, median CPU = user + system of the child)")
    print(report(times))


if __name__ == "__main__":
    main()

"""Scenario 1 counted in instructions: ``python -m bench.instructions [--small N --large N]``.

CPU time on these shared machines moves ±10% from run to run (other tenants, steal), so
a change of a few percent in flora-batch's cost per job cannot be seen in ``make bench``
without many rounds.  Instructions can: each side of scenario 1 (flora-batch and the bare
aiohttp loop, the same jobs against the same emulator) runs under Valgrind's callgrind,
which counts the user-space instructions the process executes, the same from one run to
the next to within a fraction of a percent.  Each side runs at two sizes and the
difference, divided by the extra jobs, is its cost per job: start-up and imports cancel
out.

What it does not count: the kernel's work (socket system calls, ``fsync``, the SQLite
WAL's writes), which ``make bench``'s CPU time includes.  So the ratio here is a floor
for scenario 1's, and the tool for comparing two versions of flora-batch, not a
replacement for the scenario.

Valgrind makes each side ~50× slower: the wait before the one poll is 20 s instead of 2
(each run is still over by then) and the whole comparison takes about 4 minutes, the two
sides running side by side.  Needs ``valgrind`` (Debian's package); exits 2 without it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import REPO, _env, emulator
from .s1_overhead import MAIN, SPEED, _spec

#: Seconds before a job's one poll: every run is complete by then, even under Valgrind.
SLOW_WAIT = 20.0
_COLLECTED = re.compile(r"Collected : (\d+)")


def count(side_name: str, n: int, work: Path) -> int:
    """User-space instructions of one side's process for ``n`` jobs (start-up included)."""
    side, extra = MAIN[side_name]
    spec = _spec(side, work, n, 100, f"{side_name}-{n}", **extra)
    if side_name == "flora":
        spec["max_poll"] = SLOW_WAIT
    else:
        spec["first_wait"] = spec["interval"] = SLOW_WAIT
    spec_file = work / f"{side_name}-{n}.json"
    with emulator(SPEED) as emu:
        spec_file.write_text(json.dumps({**spec, "base_url": emu.base_url}))
        got = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                "-m",
                "bench.side",
                f"@{spec_file}",
            ],
            env=_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    found = _COLLECTED.search(got.stderr)
    if got.returncode != 0 or found is None:
        raise RuntimeError(f"{side_name} ({n} jobs) under valgrind failed:\n{got.stderr[-2000:]}")
    return int(found.group(1))


def per_job(side_name: str, small: int, large: int, work: Path) -> float:
    """Instructions per job: the difference between two sizes, per extra job."""
    return (count(side_name, large, work) - count(side_name, small, work)) / (large - small)


def main() -> None:
    """Count both sides (in parallel: each is one process), print per job and the ratio."""
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--small", type=int, default=20, help="jobs of the smaller run")
    parser.add_argument("--large", type=int, default=100, help="jobs of the larger run")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("bench.instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        raise SystemExit(2)
    if args.large <= args.small:
        parser.error("--large must be more than --small")
    with tempfile.TemporaryDirectory(prefix="flora-instr-") as tmp, ThreadPoolExecutor(2) as pool:
        sides = ("flora", "aiohttp")
        futures = {s: pool.submit(per_job, s, args.small, args.large, Path(tmp)) for s in sides}
        flora, bare = (futures[s].result() for s in sides)
    print(f"scenario 1 in user-space instructions per job ({args.small} → {args.large} jobs)")
    print(f"  flora-batch       {flora / 1e6:6.2f} M")
    print(f"  bare aiohttp loop {bare / 1e6:6.2f} M")
    print(f"  ratio             {flora / bare:6.2f}×  (the kernel's share is not counted)")


if __name__ == "__main__":
    main()

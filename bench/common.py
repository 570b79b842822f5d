"""Shared plumbing: the emulator subprocess, one measured subprocess per side, manifests.

Every side of a comparison runs in a fresh interpreter (``python -m bench.side``) so
that imports, caches and the garbage collector of one side never help or hurt another;
each side measures its own process CPU time around the work itself (imports and
start-up excluded) and reports it as one JSON line.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
API_KEY = "sk_test_emulator"
IMAGE_HOST = "https://storage.googleapis.com/flora-bench"


@dataclass
class Emu:
    """A running emulator subprocess."""

    proc: subprocess.Popen[str]
    port: int

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/api/v1"

    def state(self) -> dict[str, Any]:
        """The emulator's inspection endpoint (runs, request counts)."""
        import httpx

        return httpx.get(f"{self.origin}/_emulator/state", timeout=120).json()  # type: ignore[no-any-return]

    def preload(self, path: Path) -> list[str]:
        """Create runs straight on the emulator's state (see ``emu_proc``); their ids."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"preload {path}\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()
        ids: list[str] = json.loads(Path(f"{path}.out").read_text())
        return ids

    def cpu_seconds(self) -> float:
        """User + system CPU the emulator process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLORA_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextmanager
def emulator(
    speed: float,
    max_running: int | None = None,
    *,
    server: str = "uvicorn",
) -> Iterator[Emu]:
    """Start ``bench.emu_proc`` and stop it afterwards."""
    cmd = [sys.executable, "-m", "bench.emu_proc", "--speed", repr(speed), "--server", server]
    if max_running is not None:
        cmd += ["--max-running", str(max_running)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(), cwd=REPO
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the emulator subprocess did not start")
        yield Emu(proc, int(json.loads(line)["port"]))
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(10)


@dataclass
class Measured:
    """What one measured subprocess reported, plus what the parent saw of it."""

    data: dict[str, Any]
    wall: float  # parent's view, start-up included
    maxrss_mb: float  # peak resident set size of the child
    rusage_cpu: float  # child's whole-life user+sys CPU
    samples: list[tuple[float, float, float]]  # (seconds since start, CPU s, RSS MB)


def proc_sample(pid: int) -> tuple[float, float] | None:
    """``(cpu seconds, rss MB)`` of a live process, from /proc (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    rss = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS")), 0)
    return cpu, rss / 1024


def run_measured(
    args: Sequence[str],
    *,
    module: str = "bench.side",
    timeout: float = 600,
    sample_every: float | None = None,
) -> Measured:
    """Run ``python -m MODULE ARGS``; its last stdout line is JSON.  Peak RSS via wait4.

    A long JSON argument is handed over in a file (``@path``) to keep errors readable.
    """
    files = []
    argv = []
    for arg in args:
        if len(arg) > 500:
            path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-spec-{time.time_ns()}.json"
            path.write_text(arg)
            files.append(path)
            arg = f"@{path}"
        argv.append(arg)
    try:
        return run_cmd(
            [sys.executable, "-m", module, *argv],
            timeout=timeout,
            parse_json=True,
            sample_every=sample_every,
        )
    finally:
        for path in files:
            path.unlink(missing_ok=True)


def run_cmd(
    cmd: Sequence[str],
    *,
    timeout: float = 600,
    parse_json: bool = False,
    env: dict[str, str] | None = None,
    sample_every: float | None = None,
) -> Measured:
    """Run a command to the end and measure it (wall, peak RSS, CPU) from outside."""
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-out-{os.getpid()}-{time.time_ns()}"
    start = time.perf_counter()
    with open(out_path, "w+") as out:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.PIPE, text=True, env=env or _env(), cwd=REPO
        )
        deadline = start + timeout
        status, usage = 0, None
        samples: list[tuple[float, float, float]] = []
        next_sample = start
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.perf_counter()
            if sample_every and now >= next_sample:
                got = proc_sample(proc.pid)
                if got:
                    samples.append((now - start, *got))
                next_sample = now + sample_every
            if now > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        err = proc.stderr.read() if proc.stderr else ""
        out.seek(0)
        text = out.read()
    out_path.unlink(missing_ok=True)
    data: dict[str, Any] = {"returncode": proc.returncode, "stdout": text[-2000:]}
    if parse_json:
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
        data = json.loads(text.strip().splitlines()[-1])
    data.setdefault("stderr", err[-2000:])
    assert usage is not None
    return Measured(data, wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, samples)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# -- manifests ---------------------------------------------------------------------------


def write_manifest(
    folder: Path,
    rows: int,
    *,
    techniques: Sequence[tuple[str, str]] = (("wireframe", "photo"),),
    name: str = "bench",
    concurrency: int = 4,
) -> Path:
    """A CSV of ``rows`` image rows and a YAML manifest running each technique over them.

    ``techniques`` pairs a slug with the id of its (only required) image input.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image_url"])
        for i in range(rows):
            writer.writerow([f"r{i:06d}", f"{IMAGE_HOST}/img-{i:06d}.jpg"])
    uses = "\n".join(
        f'  - technique: {slug}\n    inputs:\n      {slot}: "{{image_url}}"'
        for slug, slot in techniques
    )
    text = (
        f"name: {name}\n"
        f"techniques:\n{uses}\n"
        f"rows: {name}.csv\n"
        "id: id\n"
        "output:\n"
        "  dir: results\n"
        '  name: "{technique}/{id}-{output_id}{ext}"\n'
        f"concurrency: {concurrency}\n"
    )
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def job_list(rows: int, techniques: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """``(slug, slot, image_url)`` per job, in the order flora-batch plans them."""
    return [
        (slug, slot, f"{IMAGE_HOST}/img-{i:06d}.jpg")
        for i in range(rows)
        for slug, slot in sorted(techniques)
    ]

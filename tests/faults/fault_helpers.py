"""Fault-suite helpers: batches on disk, the CLI killed on a seeded schedule, and the promise.

The promise checked by :func:`check_promise`, always from the emulator's own records
(never from what flora-batch says about itself):

* every idempotency key was charged at most once, every job with a run was charged,
  and nothing was charged for a key no job owns;
* every job's run is the run its own key created (no job adopted another job's run);
* every finished job's files are on disk, byte-identical to what the server served;
* the results folder holds those files and nothing else, ``.flora-tmp`` is empty, and
  nothing was written next to the manifest except the ledger;
* the ledger's money equals the server's bill (charges of unresolved jobs aside: the
  ledger cannot know them, which is why they are reported).
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flora_batch.emulator import Emulator
from flora_batch.ledger import Ledger
from flora_batch.types import JobRecord, JobState

FAST = ("--min-poll", "0.05", "--rate", "0", "--timeout", "1", "--history-lag", "0.25")
CREATE = "POST /api/v1/techniques/{slug}/runs"
LEDGER_SUFFIXES = ("", "-wal", "-shm", "-journal", ".lock")
#: Exit codes after which re-running has nothing left to do (when no job is in flight).
SETTLED_CODES = (0, 1, 6)


def rows(n: int, *, start: int = 1) -> list[dict[str, str]]:
    """``n`` product rows with allowlisted image URLs."""
    return [
        {
            "sku": f"SKU-{i:03d}",
            "title": f"Ceramic mug {i}",
            "image_url": f"https://media.flora.ai/demo/mug-{i}.jpg",
        }
        for i in range(start, start + n)
    ]


def write_batch(
    folder: Path,
    n: int = 8,
    *,
    name: str = "mugs",
    technique: str = "studio-shot",
    extra: str = "",
) -> Path:
    """A manifest over a CSV of ``n`` products (through studio-shot, one PNG each)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "products.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["sku", "title", "image_url"])
        writer.writeheader()
        writer.writerows(rows(n))
    manifest = folder / f"{name}.yaml"
    manifest.write_text(
        f"name: {name}\n"
        f"technique: {technique}\n"
        "rows: products.csv\n"
        "id: sku\n"
        "inputs:\n" + INPUTS.get(technique, '  face: "{image_url}"\n') + "output:\n"
        "  dir: results\n"
        '  name: "{sku}/{technique}-{output_id}{ext}"\n' + extra
    )
    return manifest


#: The inputs section of ``write_batch``'s manifest, per technique (else one ``face``).
INPUTS = {
    "studio-shot": '  product: "{image_url}"\n  backdrop: "seamless paper behind {title}"\n',
    "book-drop": '  cover_art: "{image_url}"\n  title: "{title}"\n',  # two outputs a run
    "fit-checks": '  outfit: "{image_url}"\n  model: "{image_url}"\n',  # two outputs a run
}


def ledger_path(manifest: Path) -> Path:
    """Where the CLI puts the ledger by default: ``<name>.ledger.db`` beside the manifest."""
    return manifest.with_name(f"{manifest.stem}.ledger.db")


def read_jobs(manifest: Path) -> list[JobRecord]:
    """Every job in the manifest's ledger (opened, read, closed)."""
    with Ledger.open(ledger_path(manifest)) as ledger:
        return ledger.jobs()


def ledger_money(manifest: Path) -> tuple[float, float]:
    """``(spent, reserved)`` from the manifest's ledger."""
    with Ledger.open(ledger_path(manifest)) as ledger:
        return ledger.money()


def creates(emu: Emulator) -> int:
    """Create requests the emulator has seen."""
    return emu.request_counts[CREATE]


def all_requests(emu: Emulator) -> int:
    """Every request the emulator has seen."""
    return sum(emu.request_counts.values())


def tree(root: Path) -> set[str]:
    """Every file and folder under ``root``, as relative paths."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def is_ledger_file(rel: str, manifest: Path) -> bool:
    """Whether a path (relative to the manifest's folder's parent) is part of the ledger."""
    base = ledger_path(manifest).name
    name = Path(rel).name
    return any(name == base + s for s in LEDGER_SUFFIXES)


# -- the CLI as a subprocess --------------------------------------------------------------


@dataclass
class CliRun:
    """One CLI process: how it ended and what it printed."""

    code: int
    out: str
    killed: bool = False
    seconds: float = 0.0


@dataclass
class Schedule:
    """Everything that happened to one batch: the runs, killed or not, in order."""

    runs: list[CliRun] = field(default_factory=list)

    @property
    def last(self) -> CliRun:
        """The final run."""
        return self.runs[-1]

    def describe(self) -> str:
        """A compact account for assertion messages."""
        codes = [("KILL" if r.killed else r.code, round(r.seconds, 1)) for r in self.runs]
        return f"codes={codes}\n--- last output ---\n{self.last.out[-3000:]}"


def cli_env(server: Any) -> dict[str, str]:
    """A user's environment pointed at the emulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLORA_")}
    env["FLORA_BASE_URL"] = server.base_url
    env["FLORA_API_KEY"] = server.api_key
    return env


#: The real entry point with retry waits zeroed, as every in-process test runs it.
FAST_RETRIES_BOOT = (
    "from flora_batch import retrying\n"
    "from flora_batch.cli import main\n"
    "with retrying.set_testing():\n"
    "    main()\n"
)


def cli_command(args: list[str], *, real_waits: bool = False) -> list[str]:
    """``flora-batch ARGS`` as a user types it, or with retry waits zeroed."""
    if real_waits:
        return [sys.executable, "-m", "flora_batch", *args]
    return [sys.executable, "-c", FAST_RETRIES_BOOT, *args]


def start_cli(
    server: Any, args: list[str], log: Path, *, real_waits: bool = False, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``flora-batch ARGS`` with its output going to ``log`` (never a pipe that fills)."""
    with open(log, "wb") as fh:
        return subprocess.Popen(
            cli_command(args, real_waits=real_waits),
            env=cli_env(server),
            cwd=cwd,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def run_cli(
    server: Any,
    args: list[str],
    log: Path,
    *,
    timeout: float = 90,
    real_waits: bool = False,
    cwd: Path | None = None,
) -> CliRun:
    """Run the CLI to its end."""
    began = time.monotonic()
    proc = start_cli(server, args, log, real_waits=real_waits, cwd=cwd)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        message = f"flora-batch did not finish in {timeout}s:\n{log.read_text()}"
        raise AssertionError(message) from None
    return CliRun(code, log.read_text(errors="replace"), seconds=time.monotonic() - began)


def kill_when(
    server: Any,
    args: list[str],
    log: Path,
    trigger: Callable[[], bool],
    *,
    timeout: float = 60,
    real_waits: bool = False,
    cwd: Path | None = None,
) -> CliRun:
    """Start the CLI and SIGKILL it the moment ``trigger()`` holds (unless it ends first)."""
    began = time.monotonic()
    proc = start_cli(server, args, log, real_waits=real_waits, cwd=cwd)
    end = began + timeout
    killed = False
    while proc.poll() is None and time.monotonic() < end:
        if trigger():
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.002)
    if proc.poll() is None and not killed:
        proc.send_signal(signal.SIGKILL)
        killed = True
    code = proc.wait()
    out = log.read_text(errors="replace")
    return CliRun(code, out, killed=killed and code == -9, seconds=time.monotonic() - began)


def random_trigger(rng: random.Random, emu: Emulator) -> Callable[[], bool]:
    """A seeded kill moment: a delay after the process's first request, N more creates,
    or N more requests of any kind (polls and downloads included)."""
    kind = rng.choice(("delay", "creates", "requests"))
    if kind == "delay":
        delay, seen = rng.uniform(0.0, 0.8), all_requests(emu)
        woke: list[float] = []

        def after_delay() -> bool:
            if not woke and all_requests(emu) > seen:
                woke.append(time.monotonic())
            return bool(woke) and time.monotonic() - woke[0] >= delay

        return after_delay
    if kind == "creates":
        target = creates(emu) + rng.randint(1, 6)
        return lambda: creates(emu) >= target
    target = all_requests(emu) + rng.randint(2, 30)
    return lambda: all_requests(emu) >= target


def unsettled(manifest: Path) -> list[JobRecord]:
    """Jobs that a re-run would still work on: not done, failed or unresolved, or owed a
    bill that came late (a re-run reads it again)."""
    return [j for j in read_jobs(manifest) if not settled(j)]


def settled(job: JobRecord) -> bool:
    """Whether nothing is left to do for ``job``: terminal, and its bill known if it ran."""
    if not job.state.terminal:
        return False
    owed = job.run_id is not None and job.charged_cost is None
    return not owed or job.state is JobState.UNRESOLVED


def crash_until_done(
    server: Any,
    manifest: Path,
    args: list[str],
    seed: int,
    *,
    max_reruns: int = 8,
    real_waits: bool = False,
) -> Schedule:
    """Kill the CLI 1–3 times at seeded moments, then re-run it until the batch settles.

    The CLI runs in the manifest's folder, so a stray write to its working directory shows
    up in :func:`check_promise`; the logs are kept beside that folder.
    """
    rng = random.Random(seed)
    here = manifest.parent
    emu = server.emulator
    schedule = Schedule()
    logs = manifest.parent.parent / f"logs-{manifest.stem}"
    logs.mkdir(exist_ok=True)
    for n in range(rng.randint(1, 3)):
        log = logs / f"kill-{n}.log"
        trigger = random_trigger(rng, emu)
        killed = kill_when(server, args, log, trigger, real_waits=real_waits, cwd=here)
        schedule.runs.append(killed)
    for n in range(max_reruns):
        run = run_cli(server, args, logs / f"rerun-{n}.log", real_waits=real_waits, cwd=here)
        schedule.runs.append(run)
        if run.code in SETTLED_CODES and not unsettled(manifest):
            return schedule
    raise AssertionError(f"the batch did not settle in {max_reruns} re-runs\n{schedule.describe()}")


# -- the promise --------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_charges(emu: Emulator, jobs: list[JobRecord], *, unresolved_ok: bool) -> None:
    """Each key charged at most once; each job with a run charged; no stray charges."""
    charged = emu.charges_by_key()
    assert all(n == 1 for n in charged.values()), f"a key was charged twice: {charged}"
    owners = {j.idempotency_key for j in jobs}
    assert set(charged) <= owners, f"charges for keys no job owns: {set(charged) - owners}"
    for job in jobs:
        if job.state is JobState.UNRESOLVED:
            assert unresolved_ok, f"unexpected unresolved job {job.source}: {job.error_message}"
            continue
        assert job.state in (JobState.DONE, JobState.FAILED), (job.source, job.state)
        assert job.run_id is not None, job
        assert charged.get(job.idempotency_key) == 1, f"{job.source}: its key was never charged"
        run = emu.runs[job.run_id]
        assert run.idempotency_key == job.idempotency_key, (
            f"{job.source} adopted run {job.run_id} of key {run.idempotency_key}"
        )


def check_files(emu: Emulator, jobs: list[JobRecord], results: Path) -> None:
    """Every done job's outputs on disk as served; nothing else in the results folder."""
    expected: set[Path] = set()
    for job in jobs:
        if job.state is not JobState.DONE:
            continue
        assert job.outputs, f"{job.source} is done without outputs"
        for out in job.outputs:
            assert out.path and out.sha256, (job.source, out)
            path = Path(out.path)
            served = emu.served_media.get((job.run_id or "", out.output_id))
            assert served is not None, f"{job.source}: the server never served {out.output_id}"
            assert sha256_of(path) == served == out.sha256, f"{path} differs from what was served"
            expected.add(path.resolve())
    tmp = results / ".flora-tmp"
    assert not list(tmp.iterdir()), f"stray temporary files: {list(tmp.iterdir())}"
    found = {p.resolve() for p in results.rglob("*") if p.is_file()}
    assert found == expected, f"unexpected files: {found ^ expected}"


def check_money(emu: Emulator, manifest: Path, jobs: list[JobRecord]) -> None:
    """The ledger's spend equals the server's bill for our runs, less what unresolved jobs
    cost (other clients' runs are theirs).

    An unresolved job stays reserved, at the larger of its quote and the highest bill seen
    for its technique: it may have a run nobody can identify.
    """
    spent, reserved = ledger_money(manifest)
    with Ledger.open(ledger_path(manifest)) as ledger:
        highest = ledger.highest_bills()
    unresolved = [j for j in jobs if j.state is JobState.UNRESOLVED and j.charged_cost is None]
    keys = {j.idempotency_key for j in unresolved}
    unknown = sum(r.charged for r in emu.runs.values() if r.idempotency_key in keys)
    held = sum(max(j.quoted_cost or 0.0, highest.get(j.technique, 0.0)) for j in unresolved)
    assert abs(reserved - held) < 1e-9, f"money still reserved: {reserved} (unresolved: {held})"
    ours = emu.our_total_charged()
    assert abs(spent + unknown - ours) < 1e-6, (spent, unknown, ours)


def check_promise(
    server: Any, manifest: Path, before: set[str], *, unresolved_ok: bool = False
) -> list[JobRecord]:
    """Every clause of the promise, from the emulator's own records; returns the jobs."""
    emu = server.emulator
    jobs = read_jobs(manifest)
    check_charges(emu, jobs, unresolved_ok=unresolved_ok)
    check_files(emu, jobs, manifest.parent / "results")
    check_money(emu, manifest, jobs)
    root = manifest.parent
    new = {
        p
        for p in tree(root) - before
        if not p.startswith("results") and not is_ledger_file(p, manifest)
    }
    assert not new, f"written outside the results folder: {sorted(new)}"
    return jobs

"""Cluster-suite helpers: a private PostgreSQL schema, batches on disk, workers as processes,
and the checks, always from the emulator's own books and the ledger's event log.

* :func:`check_charged_once`: every idempotency key charged at most once, every job with
  a run charged exactly once, and no job adopted another job's run.
* :func:`check_outputs`: every done job's files are where the ledger says, byte-identical
  (sha256) to what the emulator served.
* :func:`check_exclusive`: from the events, every claim took a job that was free (never
  claimed, handed back, or its holder's lease had run out) and every change to a job was
  made by the worker holding it at that moment.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import support
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from flora_batch.emulator import Emulator, EmulatorConfig
from flora_batch.emulator.serve import _FILTER, ServerHandle
from flora_batch.ledger import Ledger
from flora_batch.types import JobRecord, JobState

FAST = ("--min-poll", "0.05", "--max-poll", "0.5", "--idle-poll", "0.1", "--timeout", "3")
IN_FLIGHT = ("submitting", "running", "downloading", "needs_reconcile")
#: The real entry point with retry waits zeroed, as the fault suite runs it.
FAST_RETRIES_BOOT = (
    "from flora_batch import retrying\n"
    "from flora_batch.cli import main\n"
    "with retrying.set_testing():\n"
    "    main()\n"
)


def start_emulator(config: EmulatorConfig) -> ServerHandle:
    """``serve.start_server`` on a socket made with ``IPPROTO_TCP``, like bench/emu_proc.py.

    asyncio sets TCP_NODELAY only on sockets whose ``proto`` is ``IPPROTO_TCP``; without
    it every response after the first on a kept-alive connection waits ~40 ms for the
    client's delayed ACK, which would make a fleet of workers look slow for nothing.
    """
    emu = Emulator(config)
    logging.getLogger("uvicorn.error").addFilter(_FILTER)  # deliberate drops are not errors
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            emu.app, log_level="warning", lifespan="off", access_log=False, timeout_keep_alive=75
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < end, "the emulator did not start"
        time.sleep(0.01)
    return ServerHandle(emu, "127.0.0.1", sock.getsockname()[1], server, thread)


@contextmanager
def pg_schema() -> Iterator[str]:
    """A URL to a fresh PostgreSQL schema (dropped on exit); skips without the env var."""
    with support.pg_schema("flora_cluster") as url:
        yield url


def write_batch(folder: Path, n: int, *, name: str = "mugs", extra: str = "") -> Path:
    """A manifest over ``n`` product rows through studio-shot (one PNG each)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "products.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["sku", "image_url"])
        writer.writeheader()
        for i in range(1, n + 1):
            writer.writerow(
                {"sku": f"SKU-{i:04d}", "image_url": f"https://media.flora.ai/demo/mug-{i}.jpg"}
            )
    manifest = folder / f"{name}.yaml"
    manifest.write_text(
        f"name: {name}\ntechnique: studio-shot\nrows: products.csv\nid: sku\n"
        'inputs:\n  product: "{image_url}"\n'
        'output:\n  dir: results\n  name: "{sku}/{technique}-{output_id}{ext}"\n' + extra
    )
    return manifest


def cli_env(server: Any, **extra: str) -> dict[str, str]:
    """A user's environment pointed at the emulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLORA_")}
    env["FLORA_BASE_URL"] = server.base_url
    env["FLORA_API_KEY"] = server.api_key
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    """``flora-batch ARGS`` with retry waits zeroed."""
    return [sys.executable, "-c", FAST_RETRIES_BOOT, *args]


def run(
    server: Any, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to its end."""
    return subprocess.run(
        cli(*args), capture_output=True, text=True, timeout=timeout, env=cli_env(server, **env)
    )


class Fleet:
    """Worker processes on one ledger, their output in log files."""

    def __init__(self, server: Any, ledger: str, logs: Path, **env: str) -> None:
        self.server, self.ledger, self.logs, self.env = server, ledger, logs, env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``flora-batch worker --worker-id NAME ARGS``."""
        argv = cli("worker", "--ledger", self.ledger, "--worker-id", name, *FAST, *args)
        with open(self.logs / f"{name}.log", "wb") as fh:
            proc = subprocess.Popen(
                argv, env=cli_env(self.server, **self.env), stdout=fh, stderr=subprocess.STDOUT
            )
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL a worker: no hand-back, no goodbye."""
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def terminate(self, name: str, timeout: float = 15) -> int:
        """SIGTERM a worker and wait for its exit code."""
        self.procs[name].send_signal(signal.SIGTERM)
        return self.procs[name].wait(timeout)

    def wait(self, name: str, timeout: float = 60) -> int:
        """Wait for a worker to exit by itself."""
        return self.procs[name].wait(timeout)

    def log(self, name: str) -> str:
        """What a worker printed."""
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        """Kill whatever is still running (test teardown)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def describe(self) -> str:
        """Every worker's exit code and the tail of its log, for assertion messages."""
        return "\n".join(
            f"--- {name}: {proc.poll()}\n{self.log(name)[-2500:]}"
            for name, proc in self.procs.items()
        )


class Sampler:
    """A thread counting the ledger's jobs in flight every few milliseconds."""

    def __init__(self, ledger_url: str, batch: str, every: float = 0.005) -> None:
        url = make_url(ledger_url).set(drivername="postgresql+psycopg")
        self.engine = create_engine(url)
        self.batch, self.every = batch, every
        self.max = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()

    def _loop(self) -> None:
        query = text("SELECT count(*) FROM jobs WHERE batch = :b AND state = ANY(:s)")
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                n = conn.execute(query, {"b": self.batch, "s": list(IN_FLIGHT)}).scalar_one()
                conn.commit()
                self.max, self.samples = max(self.max, n), self.samples + 1
                time.sleep(self.every)


def read(ledger_url: str) -> tuple[list[JobRecord], list[dict[str, Any]]]:
    """Every job and every event of the ledger."""
    with Ledger.open(ledger_url) as ledger:
        return ledger.jobs(), ledger.events()


def counts(ledger_url: str, batch: str) -> dict[JobState, int]:
    """Jobs of ``batch`` by state."""
    with Ledger.open(ledger_url) as ledger:
        return ledger.counts(batch)


def holding(ledger_url: str, worker: str, states: tuple[str, ...] | None = None) -> int:
    """Unfinished jobs ``worker`` holds (in ``states``, if given)."""
    with Ledger.open(ledger_url) as ledger:
        return sum(
            1
            for j in ledger.jobs()
            if j.worker_id == worker
            and not j.state.terminal
            and (states is None or j.state.value in states)
        )


def creators(ledger_url: str) -> set[str]:
    """Workers that have sent at least one create (a ``submitting`` event of theirs)."""
    with Ledger.open(ledger_url) as ledger:
        return {e["detail"].get("worker") for e in ledger.events() if e["to_state"] == "submitting"}


def wait_for(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    """Poll (test side) until ``predicate()`` holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached in {timeout}s")


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_charged_once(emu: Emulator, jobs: list[JobRecord]) -> None:
    """One charge per key; every job with a run charged once, for its own key's run."""
    charged = emu.charges_by_key()
    assert all(n == 1 for n in charged.values()), {k: n for k, n in charged.items() if n > 1}
    owners = {j.idempotency_key for j in jobs}
    assert set(charged) <= owners, f"charges for keys no job owns: {set(charged) - owners}"
    for job in jobs:
        assert job.state in (JobState.DONE, JobState.FAILED), (job.source, job.state)
        assert job.run_id is not None, job
        assert charged.get(job.idempotency_key) == 1, f"{job.source}: its key was never charged"
        assert emu.runs[job.run_id].idempotency_key == job.idempotency_key, job.source


def check_outputs(emu: Emulator, jobs: list[JobRecord], read_bytes: Callable[[str], bytes]) -> int:
    """Every done job's outputs, read back, hash to what the server served; returns how many."""
    seen = 0
    for job in jobs:
        if job.state is not JobState.DONE:
            continue
        assert job.outputs, job.source
        for out in job.outputs:
            served = emu.served_media.get((job.run_id or "", out.output_id))
            assert served is not None and out.path, (job.source, out)
            assert hashlib.sha256(read_bytes(out.path)).hexdigest() == served == out.sha256
            seen += 1
    return seen


def check_exclusive(events: list[dict[str, Any]]) -> dict[str, int]:
    """No job was held by two live workers at once; returns claims by worker.

    A claim must find the job free: never claimed, handed back, or the previous holder's
    lease (as the claim saw it) over.  Every state change a worker logged must fall
    while it held the job: after its claim, before anyone else's.
    """
    holder: dict[str, str | None] = {}
    claims: dict[str, int] = {}
    for e in events:
        d, key = e["detail"], e["job_key"]
        if key is None:
            continue
        if d.get("action") == "claim":
            prev, lease = d.get("previous"), d.get("previous_lease")
            assert prev is None or lease is None or lease < e["at"], (
                f"{key}: {d['worker']} claimed it at {e['at']} while {prev} held it until {lease}"
            )
            assert holder.get(key) in (None, prev), (key, holder.get(key), d)
            holder[key] = d["worker"]
            claims[d["worker"]] = claims.get(d["worker"], 0) + 1
        elif d.get("action") == "hand_back":
            assert holder.get(key) == d["worker"], (key, holder.get(key), d)
            holder[key] = None
        elif "worker" in d:
            assert holder.get(key) == d["worker"], (
                f"{key}: {d['worker']} did {d.get('action')} while {holder.get(key)} held it"
            )
    return claims


def claim_details(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The detail of every claim event."""
    return [e["detail"] for e in events if e["detail"].get("action") == "claim"]


def decode(value: Any) -> Any:
    """JSON text or a value already decoded."""
    return json.loads(value) if isinstance(value, str) else value

"""One batch, many machines: ``flora-batch submit`` and ``flora-batch worker``.

``submit_batch`` is ``run`` up to the plan: it validates the manifest against the live
schemas, records the jobs as ``planned`` in a shared PostgreSQL ledger and stores what a
worker needs without the manifest (results location, max_cost, concurrency, create rate,
technique schemas: ``ledger.leases.Leases.publish``), then returns.

``serve`` is one worker process.  It claims jobs from the ledger and works them with the
very ``Worker`` that ``run`` uses, given three seams:

* ``refill``: when it has room and an empty queue, the loop claims more jobs
  (``Leases.claim``: ``FOR UPDATE SKIP LOCKED``, serialised per batch so that the
  cluster-wide in-flight cap, the 429 pause and ``max_cost`` hold across workers).
  Jobs of a dead worker come back once its lease has run out, in whatever state it left
  them, and ``Worker._load`` resumes them exactly as after a crash: a ``submitting`` job is
  sent again only with its key (or reconciled), a ``running`` one is polled.
* ``SharedPacer``: every create reserves its slot in the batch's pacing row, and a 429
  pauses and halves the limit for every worker, not just the one that saw it.
* the fence: the worker's ``Ledger`` carries its ``worker_id``, so a job changes only
  while this worker holds it (``LeaseLost`` otherwise) and every event names the worker.

A ``LeaseKeeper`` thread renews the worker's leases every ``lease / 3`` seconds, apart
from the event loop, so a long download does not cost the worker its jobs.  On SIGTERM the
worker stops claiming, cancels its steps (each one is already in the ledger) and hands its
unfinished jobs back, so the others take them at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .config import DEFAULT_CONCURRENCY, Settings
from .errors import FloraError, LedgerError, UsageError
from .ledger import Ledger
from .ledger.leases import BatchRow, Leases, worker_lock
from .locations import ledger_location, results_location
from .manifest import Manifest
from .pipeline import Prepared, prepare
from .pipeline import _reopen as reopen_jobs
from .plan import gone_keys, superseded_meta
from .remote.client import FloraClient
from .results.local import Results
from .results.objects import ObjectResults, is_object_url, open_results
from .settling import note_gone
from .types import IOSlot, JobRecord, JobState, Technique, cost_unit
from .worker import Outcome, Pacer, Worker

log = logging.getLogger("flora_batch.cluster")

Clock = Callable[[], float]

DEFAULT_LEASE = 30.0  # seconds a claim lasts without a heartbeat
DEFAULT_IDLE_POLL = 2.0  # seconds between looks for work when there is none
_STOPS = ("interrupted", "runtime", "credits", "auth", "outage", "error")


def new_worker_id() -> str:
    """``host-pid-xxxx``: unique per process, readable in ``status``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def require_postgres(url: str) -> None:
    """Refuse a SQLite ledger for ``submit``/``worker``: one machine needs only ``run``."""
    if not url.startswith(("postgresql:", "postgresql+", "postgres:")):
        raise UsageError(
            f"{url} is not a PostgreSQL ledger: `submit` and `worker` share one ledger between "
            "machines (--ledger postgresql://...); on one machine, `flora-batch run` does it all"
        )


# -- submit --------------------------------------------------------------------------------


@dataclass
class Submitted:
    """What ``submit_batch`` recorded."""

    prepared: Prepared
    ledger_url: str
    results: str
    new: int
    retried: int
    counts: dict[JobState, int]
    concurrency: int
    max_cost: float | None


async def submit_batch(
    manifest: Manifest,
    settings: Settings,
    *,
    results: str | None = None,
    storage_options: dict[str, Any] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = time.time,
) -> Submitted:
    """Validate and plan a batch into the shared ledger, for workers to take; pays nothing."""
    url = ledger_location(manifest, settings)
    require_postgres(url)
    location = results or str(results_location(manifest, settings).absolute())
    _prepare_results(location, storage_options)
    with Ledger.open(url) as ledger:
        async with FloraClient(settings.base_url, settings.api_key, transport=transport) as client:
            prepared = await prepare(manifest, client, ledger, settings, remember=True)
        ledger.set_cost_unit(manifest.name, cost_unit(prepared.techniques))
        if prepared.uploads:
            raise UsageError(
                "this batch has local input files: workers cannot upload them yet; "
                "use `flora-batch run` (or give the inputs as URLs)"
            )
        quotes = {slug: t.run_cost for slug, t in prepared.techniques.items()}
        new = ledger.record_planned(prepared.new_jobs(), quoted_cost=quotes, now=clock())
        retried = reopen_jobs(ledger, prepared, settings, clock)
        note_gone(ledger, manifest.name, prepared.plan)  # workers finish them apart
        concurrency = settings.concurrency or manifest.concurrency or DEFAULT_CONCURRENCY
        max_cost = settings.max_cost if settings.max_cost is not None else manifest.max_cost
        row = BatchRow(
            name=manifest.name,
            results=location,
            max_cost=max_cost,
            concurrency=concurrency,
            submit_rate=settings.submit_rate,
            techniques=techniques_json(prepared.techniques),
            manifest=str(manifest.path.absolute()),
            created_at=clock(),
        )
        Leases(ledger).publish(row, now=clock())
        counts = ledger.counts(manifest.name)
        return Submitted(
            prepared, ledger.url, location, new, retried, counts, concurrency, max_cost
        )


def _prepare_results(location: str, storage_options: dict[str, Any] | None) -> None:
    """Create the folder, or check the bucket, before any job is planned."""
    if is_object_url(location):
        ObjectResults(location, storage_options=storage_options).prepare()
    else:
        Results(Path(location)).prepare()


def techniques_json(techniques: dict[str, Technique]) -> str:
    """Technique schemas as JSON text, for the ``batches`` row."""
    return json.dumps({slug: dataclasses.asdict(t) for slug, t in techniques.items()})


def techniques_from_json(text: str) -> dict[str, Technique]:
    """The inverse of :func:`techniques_json`."""
    out: dict[str, Technique] = {}
    for slug, data in json.loads(text).items():
        slots = {k: tuple(IOSlot(**s) for s in data[k]) for k in ("inputs", "outputs")}
        out[slug] = Technique(**{**data, **slots})
    return out


# -- worker --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    """How one ``flora-batch worker`` process behaves."""

    worker_id: str = field(default_factory=new_worker_id)
    lease: float = DEFAULT_LEASE
    concurrency: int | None = None  # this process's runs in flight (default: the batch's cap)
    batch: str | None = None  # only this batch (default: every submitted batch, oldest first)
    exit_when_idle: bool = False
    idle_poll: float = DEFAULT_IDLE_POLL
    storage_options: dict[str, Any] | None = None


@dataclass
class Served:
    """How a worker process ended."""

    worker_id: str
    done: int = 0  # jobs this worker finished
    rounds: int = 0
    stopped: str | None = None  # idle | interrupted | runtime | credits | auth | outage | error
    error: FloraError | None = None


class Stopper:
    """Set by SIGTERM/SIGINT: stops claiming, and stops the batch being worked."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.worker: Worker | None = None

    def __call__(self) -> None:
        self.event.set()
        if self.worker is not None:
            self.worker.stop_event.set()

    async def nap(self, seconds: float) -> None:
        """Sleep unless (or until) stopped."""
        try:
            await asyncio.wait_for(self.event.wait(), seconds)
        except TimeoutError:
            pass


class SharedPacer(Pacer):
    """The worker's pacer, with the batch's pacing row as the cluster-wide authority."""

    def __init__(
        self, leases: Leases, batch: BatchRow, worker: str, limit: int, clock: Clock
    ) -> None:
        super().__init__(limit, batch.submit_rate, clock)
        self.leases = leases
        self.batch = batch.name
        self.worker = worker

    def took(self) -> float:
        """Reserve this create's slot cluster-wide; the wait until it comes."""
        now = self.clock()
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        slot = self.leases.reserve_submit(self.batch, now=now, interval=interval)
        if interval > 0 or slot > now:  # paced, or paused by someone: later ones wait too
            self.next_submit = max(self.next_submit, slot + interval)
        return max(0.0, slot - now)

    def rate_limited(self, retry_after: float | None) -> float:
        """Back off here and tell every worker (pause, halved limit)."""
        pause = super().rate_limited(retry_after)
        shared = self.leases.rate_limited(self.batch, self.worker, now=self.clock(), pause=pause)
        if shared is not None:
            self.paused_until = max(self.paused_until, shared.paused_until)
        return pause

    def succeeded(self) -> None:
        """Grow back here and cluster-wide."""
        super().succeeded()
        self.leases.succeeded(self.batch, now=self.clock())


class LeaseKeeper:
    """A thread renewing every lease of one worker each ``lease / 3`` seconds."""

    def __init__(self, leases: Leases, worker: str, lease: float, clock: Clock) -> None:
        self.leases, self.worker, self.lease, self.clock = leases, worker, lease, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="flora-leases", daemon=True)

    def start(self) -> None:
        """Begin renewing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (the leases then run out unless handed back)."""
        self._stop.set()
        self._thread.join(timeout=self.lease)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                self.leases.renew(self.worker, now=self.clock(), lease=self.lease)
            except LedgerError as exc:  # the next beat tries again; the fence keeps us honest
                log.warning("could not renew the leases of %s: %s", self.worker, exc)


async def serve(
    settings: Settings,
    options: WorkerOptions,
    *,
    stopper: Stopper | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = time.time,
) -> Served:
    """Work submitted batches until idle (``exit_when_idle``), stopped, or out of runtime."""
    url = ledger_location(None, settings) if settings.ledger else ""  # "": refused below
    require_postgres(url)
    stopper = stopper or Stopper()
    served = Served(options.worker_id)
    with Ledger.open(url) as ledger:
        leases = Leases(ledger)
        hold = worker_lock(ledger)
        ledger.worker_id = options.worker_id
        keeper = LeaseKeeper(leases, options.worker_id, options.lease, clock)
        keeper.start()
        try:
            async with FloraClient(
                settings.base_url, settings.api_key, transport=transport, timeout=settings.timeout
            ) as client:
                crew = _Crew(ledger, leases, client, settings, options, stopper, clock)
                await crew.loop(served)
        finally:
            keeper.stop()
            back = leases.hand_back(options.worker_id, now=clock())
            if back:
                log.info("%s handed back %d jobs", options.worker_id, back)
            hold.release()
    return served


@dataclass
class _Crew:
    """The worker process's rounds: claim a batch's jobs, work them, hand back the rest."""

    ledger: Ledger
    leases: Leases
    client: FloraClient
    settings: Settings
    options: WorkerOptions
    stopper: Stopper
    clock: Clock

    async def loop(self, served: Served) -> None:
        """Round after round until a stop, the runtime, or idleness with ``exit_when_idle``."""
        limit = self.settings.max_runtime
        deadline = self.clock() + limit if limit else None
        while not self.stopper.event.is_set():
            if deadline is not None and self.clock() >= deadline:
                served.stopped = "runtime"
                return
            found = self._claim_some()
            if found is None:
                if self.options.exit_when_idle and not self._work_left():
                    served.stopped = "idle"
                    return
                await self.stopper.nap(self.options.idle_poll)
                continue
            outcome, done = await self._work(*found, deadline=deadline)
            served.rounds += 1
            served.done += done
            if outcome.stopped in _STOPS or outcome.error is not None:
                served.stopped = outcome.stopped or "error"
                served.error = outcome.error
                return
        served.stopped = "interrupted"

    def _claim_some(self) -> tuple[BatchRow, list[JobRecord]] | None:
        """The first batch with work for this worker, and the jobs claimed from it."""
        for batch in self._batches():
            n = self.options.concurrency or batch.concurrency
            claimed = self._claim(batch.name, n)
            if claimed:
                return batch, claimed
        return None

    def _work_left(self) -> bool:
        """Whether any batch has jobs nobody holds (the cap or a 429 pause may delay them)."""
        now = self.clock()
        return any(self.leases.has_work(b.name, now=now) for b in self._batches())

    def _batches(self) -> list[BatchRow]:
        if self.options.batch is None:
            return self.leases.batches()
        found = self.leases.batch(self.options.batch)
        if found is None:
            raise UsageError(f"no batch {self.options.batch!r} was submitted to this ledger")
        return [found]

    def _claim(self, batch: str, n: int) -> list[JobRecord]:
        now, worker = self.clock(), self.options.worker_id
        claimed = self.leases.claim(batch, worker, n, now=now, lease=self.options.lease)
        if claimed:
            log.debug("%s claimed %d jobs of %s", worker, len(claimed), batch)
        return claimed

    async def _work(
        self, batch: BatchRow, claimed: list[JobRecord], *, deadline: float | None
    ) -> tuple[Outcome, int]:
        """One batch through the shared ``Worker`` until it has nothing left to claim."""
        worker_id = self.options.worker_id
        results = open_results(
            batch.results, worker=worker_id, storage_options=self.options.storage_options
        )
        results.prepare()
        local = self.options.concurrency or batch.concurrency
        left = None if deadline is None else max(0.0, deadline - self.clock())
        worker = Worker(
            self.ledger,
            self.client,
            results,
            techniques_from_json(batch.techniques),
            settings=dataclasses.replace(
                self.settings, submit_rate=batch.submit_rate, max_runtime=left
            ),
            concurrency=local,
            max_cost=batch.max_cost,
            clock=self.clock,
            refill=lambda n: self._claim(batch.name, n),
            pacer=SharedPacer(self.leases, batch, worker_id, local, self.clock),
            # Jobs of rows edited or removed before the last `submit`: their files go
            # under _superseded/, as `run` puts them, apart from the rows' new jobs.
            superseded=gone_keys(self.ledger.get_meta(superseded_meta(batch.name))),
        )
        self.stopper.worker = worker
        if self.stopper.event.is_set():
            worker.stop_event.set()
        try:
            outcome = await worker.run(claimed)
        finally:
            self.stopper.worker = None
            if isinstance(results, ObjectResults):
                results.close()
        self._hand_back_stuck(worker)
        return outcome, worker.done_this_run

    def _hand_back_stuck(self, worker: Worker) -> None:
        """Jobs this round could not settle go back, claimable again after ``max_poll``."""
        now = self.clock()
        if worker.stuck:
            for key, why in worker.stuck.items():
                log.warning("%s: %s", worker.jobs[key].source or key, why)
            self.leases.hand_back(
                self.options.worker_id,
                now=now,
                keys=list(worker.stuck),
                not_before=now + self.settings.max_poll,
            )
        self.leases.hand_back(self.options.worker_id, now=now)

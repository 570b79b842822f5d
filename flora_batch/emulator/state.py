"""The emulator's memory: runs, charges, idempotency keys, assets and request counts.

This is what a test asserts on from the server's side ("each job was charged exactly
once": ``charges_by_key()``).  Money follows CONTRACT.md §4/§6: a created run is charged
once, at its technique's cost times ``bill_factor``; a repeated idempotency key charges
nothing; a create that fails before the run exists (400, 402, an injected 5xx) charges
nothing and leaves the key free; with ``refund_failed`` a failed run's charge is given
back (a negative entry).

A create looks its key up, waits ``create_latency`` (real seconds), then books the run:
charges it and binds its key (the key window counts from there).  A same-key create
arriving meanwhile waits for the first (``merge_concurrent_creates``) or runs beside it.
With ``other_clients`` a create may be accompanied by runs someone else in the workspace
made: ``foreign`` runs, billed to the workspace (``total_charged``) but left out of
``charges_by_key`` and ``our_total_charged``.

With ``state_file`` the whole state is loaded from that JSON file at start
(``persist.py``); the app rewrites it after every request that may change it.

Assets live in an ``AssetStore`` (``assets.py``) that shares this state's lock and is
reset with it; ``assets`` is its dict of records and ``assets_by_sha256()`` answers "was
each file uploaded exactly once".

Nothing happens in the background: refunds of runs that failed since the last look are
booked lazily (``settle``) whenever the state is read.  A lock makes the state safe to
read from a test thread while a uvicorn thread serves requests.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from flora_batch.types import RunInput

from . import persist
from .assets import AssetRecord, AssetStore
from .catalog import Catalog, TechniqueDef, load_catalog
from .config import DUPLICATE_CODES, EmulatorConfig
from .faults import FaultDice
from .problems import ApiProblem, FieldError, invalid
from .runs import RunRecord, failure_message, queue_seconds, schedule
from .validation import CreateRequest


@dataclass(frozen=True)
class Charge:
    """One line of the bill: a charge at create (positive) or a refund (negative)."""

    run_id: str
    idempotency_key: str | None
    technique: str
    amount: float  # USD
    at: float  # clock seconds
    kind: str = "charge"  # "charge" or "refund"
    foreign: bool = False  # a run someone else in the workspace made (``other_clients``)


@dataclass(frozen=True)
class CreateResult:
    """What a create did: the run, and whether it is an existing run replayed for its key."""

    run: RunRecord
    replayed: bool = False


@dataclass
class _KeyEntry:
    run_id: str
    at: float  # when the run was booked: the key window counts from here


class EmulatorState:
    """In-memory FLORA: the catalog, the runs, the bill and the books kept for tests."""

    def __init__(self, config: EmulatorConfig | None = None, catalog: Catalog | None = None):
        self.config = config or EmulatorConfig()
        self.catalog = catalog or load_catalog()
        self.dice = FaultDice(self.config.faults)
        self._lock = threading.RLock()
        self.runs: dict[str, RunRecord] = {}
        self._charges: list[Charge] = []
        self.request_counts: Counter[str] = Counter()
        self.served_media: dict[tuple[str, str], str] = {}
        self.media_cache: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.balance: float | None = self.config.balance
        self._keys: dict[str, _KeyEntry] = {}
        self._unrefunded: set[str] = set()
        self._in_flight: dict[str, asyncio.Event] = {}
        self._ours = 0  # runs our creates made (not foreign): seeds ``other_clients``
        self.asset_store = AssetStore(self.config, self.dice, self._lock)
        #: Every asset by id (the store's own dict, so it stays current).
        self.assets: dict[str, AssetRecord] = self.asset_store.records
        if self.config.state_file is not None and self.config.state_file.exists():
            self.restore(persist.read(self.config.state_file))

    # -- time and bookkeeping -------------------------------------------------------

    def now(self) -> float:
        """The emulator's clock, in seconds."""
        return self.config.now()

    def count(self, endpoint: str) -> int:
        """Count one request to ``endpoint`` ("METHOD /route/{template}"); returns its ordinal."""
        with self._lock:
            self.request_counts[endpoint] += 1
            return self.request_counts[endpoint]

    @property
    def charges(self) -> list[Charge]:
        """Every charge and refund so far, oldest first (a copy)."""
        self.settle()
        with self._lock:
            return list(self._charges)

    def charges_by_key(self) -> dict[str, int]:
        """How many times each idempotency key was charged (keyless and foreign runs are
        left out)."""
        counts: Counter[str] = Counter(
            c.idempotency_key
            for c in self.charges
            if c.kind == "charge" and c.idempotency_key and not c.foreign
        )
        return dict(counts)

    def assets_by_sha256(self) -> dict[str, int]:
        """How many assets hold each distinct file, by the SHA-256 of its bytes."""
        return self.asset_store.by_sha256()

    def total_charged(self) -> float:
        """Net USD charged to the workspace: charges minus refunds, foreign runs included."""
        return round(sum(c.amount for c in self.charges), 6)

    def our_total_charged(self) -> float:
        """Net USD charged for the runs our creates made (foreign runs left out)."""
        return round(sum(c.amount for c in self.charges if not c.foreign), 6)

    def settle(self) -> None:
        """Book the refunds of failed runs whose failure time has passed (``refund_failed``)."""
        if not self._unrefunded:
            return
        now = self.now()
        with self._lock:
            for run_id in sorted(self._unrefunded):
                run = self.runs[run_id]
                if run.ended_at <= now:
                    self._refund(run)

    def _refund(self, run: RunRecord) -> None:
        self._unrefunded.discard(run.run_id)
        run.refunded = True
        refund = Charge(
            run.run_id,
            run.idempotency_key,
            run.technique,
            -run.charged,
            run.ended_at,
            "refund",
            run.foreign,
        )
        self._charges.append(refund)
        if self.balance is not None:
            self.balance += run.charged

    def reset(self) -> None:
        """Forget every run, asset, charge, key, count and forced fault; restore the balance."""
        with self._lock:
            self.asset_store.reset()
            self.runs.clear()
            self._charges.clear()
            self.request_counts.clear()
            self.served_media.clear()
            self.media_cache.clear()
            self._keys.clear()
            self._unrefunded.clear()
            self._ours = 0
            self.balance = self.config.balance
            self.dice.clear()

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, technique: TechniqueDef, request: CreateRequest) -> CreateResult:
        """Create and charge a run, or replay the run its idempotency key already made.

        Raises:
            ApiProblem: for a repeated key, ``duplicate_status``'s answer or 409
                ``idempotency_duplicate`` (``conflict`` mode); 402 ``insufficient_credits``.
                None of them charges anything or binds the key.
        """
        arrived = self.now()
        key = request.idempotency_key
        while True:
            with self._lock:
                existing = self._duplicate(key)
                if existing is not None:
                    return CreateResult(existing, replayed=True)
                busy = self._in_flight.get(key) if key else None
                if busy is None:
                    held = self._hold(key)
                    break
            await busy.wait()  # merged: the first same-key create books (or fails) first
        try:
            if self.config.create_latency:
                await asyncio.sleep(self.config.create_latency)
            with self._lock:
                return CreateResult(self._create_now(technique, request, arrived))
        finally:
            if held is not None:
                del self._in_flight[key or ""]
                held.set()

    def _hold(self, key: str | None) -> asyncio.Event | None:
        """Mark ``key`` as being created, so same-key creates wait (if they are merged)."""
        if not key or not self.config.create_latency or not self.config.merge_concurrent_creates:
            return None
        event = self._in_flight[key] = asyncio.Event()
        return event

    def _duplicate(self, key: str | None) -> RunRecord | None:
        """The run a live key made, to replay; raises if repeats are refused instead."""
        existing = self._run_for_key(key, self.now())
        if existing is None:
            return None
        status = self.config.duplicate_status
        if status is not None:
            field = "Idempotency-Key" if self.config.idempotency_carrier == "header" else None
            raise _duplicate_problem(status, field or "idempotency_key")
        if self.config.idempotency == "conflict":
            raise ApiProblem("idempotency_duplicate")
        return existing

    def _create_now(
        self, technique: TechniqueDef, request: CreateRequest, arrived: float
    ) -> RunRecord:
        """Book a run: check credit, charge it, bind its key; others may create beside it."""
        now = self.now()
        self._check_credit(self._bill(technique))
        run = self._new_run(
            technique,
            request.inputs,
            request.idempotency_key,
            arrived,
            now,
            _identity(technique, request),
        )
        run.callback_url = request.callback_url
        self._book(run, now)
        self._ours += 1
        self._accompany(run, technique, now)
        return run

    def _bill(self, technique: TechniqueDef) -> float:
        """What a run of ``technique`` is billed: its cost times ``bill_factor``."""
        return round(technique.run_cost * self.config.bill_factor, 6)

    def _accompany(self, ours: RunRecord, technique: TechniqueDef, now: float) -> None:
        """``other_clients``: runs someone else in the workspace made around ours."""
        cfg = self.config
        offsets = self.dice.company(
            self._ours, cfg.other_clients, cfg.other_clients_burst, cfg.other_clients_spread
        )
        for n, offset in enumerate(offsets):
            if self.balance is not None and self.balance + 1e-9 < self._bill(technique):
                return  # their create would have been a 402
            stamp = ours.created_at + offset
            identity = f"foreign:{self._ours}:{n}"
            run = self._new_run(technique, ours.inputs, None, stamp, stamp, identity, foreign=True)
            self._book(run, stamp)

    def add_foreign_runs(self, slug: str, stamps: list[float]) -> list[RunRecord]:
        """Runs of ``slug`` someone else in the workspace made at ``stamps`` (clock seconds):
        a test aid, as ``other_clients`` makes them, but at chosen moments."""
        technique = self.catalog.get(slug)
        assert technique is not None, slug
        made = []
        with self._lock:
            for n, stamp in enumerate(stamps):
                inputs: tuple[RunInput, ...] = ()
                identity = f"foreign:added:{len(self.runs)}:{n}"
                run = self._new_run(technique, inputs, None, stamp, stamp, identity, foreign=True)
                self._book(run, stamp)
                made.append(run)
        return made

    def _run_for_key(self, key: str | None, now: float) -> RunRecord | None:
        """The run a live key points at; a key older than ``key_window`` is forgotten."""
        entry = self._keys.get(key) if key else None
        if entry is None:
            return None
        window = self.config.key_window
        if window is not None and now - entry.at >= window:
            del self._keys[key or ""]
            return None
        return self.runs.get(entry.run_id)

    def _check_credit(self, cost: float) -> None:
        limit = self.config.faults.insufficient_after
        if limit is not None and self._ours >= limit:
            raise ApiProblem("insufficient_credits")
        if self.balance is not None and self.balance + 1e-9 < cost:
            raise ApiProblem("insufficient_credits")

    def _new_run(
        self,
        technique: TechniqueDef,
        inputs: tuple[RunInput, ...],
        key: str | None,
        created_at: float,
        booked_at: float,
        identity: str,
        *,
        foreign: bool = False,
    ) -> RunRecord:
        """A run with its whole timeline decided at booking: start, end and fate."""
        speed = self.config.speed
        run_seconds = technique.typical_seconds / speed
        ready = booked_at + queue_seconds(technique.typical_seconds) / speed
        start = schedule(ready, run_seconds, list(self.runs.values()), self.config.max_running)
        fate = self.dice.run_fate(identity, may_force=not foreign)
        end = start + run_seconds * (fate.at_fraction if fate.error_code else 1.0)
        return RunRecord(
            run_id=f"run_{secrets.token_hex(12)}",
            seq=len(self.runs) + 1,
            technique=technique.slug,
            inputs=inputs,
            idempotency_key=key,
            created_at=created_at,
            started_at=start,
            ended_at=end,
            run_seconds=run_seconds,
            cost=technique.run_cost,
            charged=self._bill(technique),
            error_code=fate.error_code,
            error_message=failure_message(fate.error_code) if fate.error_code else None,
            foreign=foreign,
        )

    def _book(self, run: RunRecord, now: float) -> None:
        """Store the run, charge it once, remember its key."""
        self.runs[run.run_id] = run
        self._charges.append(
            Charge(
                run.run_id,
                run.idempotency_key,
                run.technique,
                run.charged,
                now,
                foreign=run.foreign,
            )
        )
        if self.balance is not None:
            self.balance -= run.charged
        if run.idempotency_key:
            self._keys[run.idempotency_key] = _KeyEntry(run.run_id, now)
        if run.fails and self.config.refund_failed and run.charged > 0:
            self._unrefunded.add(run.run_id)

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run with this id, with any due refund booked."""
        self.settle()
        return self.runs.get(run_id)

    def status(self, run_id: str) -> str:
        """A run's status now (KeyError for an unknown run)."""
        return self.runs[run_id].status_at(self.now())

    def list_runs(
        self,
        technique: str | None = None,
        status: str | None = None,
        after: tuple[int, int] | None = None,
    ) -> list[RunRecord]:
        """The run history as ``GET /technique-runs`` shows it now, newest first.

        Newest by created time (ms), ties by sequence; a run shows only once the clock
        has reached its ``created_at`` plus ``history_delay``.  ``after`` is a cursor: the
        ``history_order`` of the last item already seen; only runs older than it follow,
        so runs added between page reads never shift a page.
        """
        self.settle()
        now = self.now()
        shown_before = now - self.config.history_delay
        with self._lock:
            runs = sorted(self.runs.values(), key=lambda r: r.history_order, reverse=True)
        return [
            r
            for r in runs
            if r.created_at <= shown_before
            and (after is None or r.history_order < after)
            and (technique is None or r.technique == technique)
            and (status is None or r.status_at(now) == status)
        ]

    # -- inspection -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything a person or a test wants to see, as JSON-ready data."""
        now = self.now()
        charges = self.charges
        with self._lock:
            runs = [self._run_summary(r, now) for r in sorted(self.runs.values(), key=_seq)]
            return {
                "now": now,
                "runs": runs,
                "charges": [asdict(c) for c in charges],
                "charges_by_key": self.charges_by_key(),
                "total_charged": self.total_charged(),
                "our_total_charged": self.our_total_charged(),
                "balance": self.balance,
                "request_counts": dict(sorted(self.request_counts.items())),
                "served_media": {f"{r}/{o}": h for (r, o), h in self.served_media.items()},
                "assets": self.asset_store.snapshot(),
                "assets_by_sha256": self.asset_store.by_sha256(),
            }

    @staticmethod
    def _run_summary(run: RunRecord, now: float) -> dict[str, Any]:
        return {
            "run_id": run.run_id,
            "technique": run.technique,
            "idempotency_key": run.idempotency_key,
            "status": run.status_at(now),
            "progress": run.progress_at(now),
            "charged": run.charged,
            "refunded": run.refunded,
            "foreign": run.foreign,
            "error_code": run.error_code,
            "created_at": run.created_at,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "inputs": [{"id": i.id, "type": i.type, "value": i.value} for i in run.inputs],
        }

    # -- the state file ---------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The whole state as JSON-ready data (``persist.py`` says what is kept)."""
        with self._lock:
            return {
                "format": persist.FORMAT,
                "runs": [persist.run_data(r) for r in sorted(self.runs.values(), key=_seq)],
                "charges": [asdict(c) for c in self._charges],
                "keys": {k: asdict(e) for k, e in self._keys.items()},
                "unrefunded": sorted(self._unrefunded),
                "balance": self.balance,
                "request_counts": dict(self.request_counts),
                "served_media": [[r, o, h] for (r, o), h in self.served_media.items()],
                "assets": self.asset_store.dump(),
            }

    def restore(self, data: dict[str, Any]) -> None:
        """Replace the state with one ``dump`` wrote (forced faults and caches start empty).

        Raises:
            ValueError: the data is not a state this version wrote.
        """
        persist.check_format(data)
        with self._lock:
            self.reset()
            runs = [persist.run_record(r) for r in data["runs"]]
            self.runs.update((r.run_id, r) for r in runs)
            self._ours = sum(1 for r in runs if not r.foreign)
            self._charges.extend(Charge(**c) for c in data["charges"])
            self._keys.update((k, _KeyEntry(**e)) for k, e in data["keys"].items())
            self._unrefunded.update(data["unrefunded"])
            self.balance = data["balance"]
            self.request_counts.update(data["request_counts"])
            self.served_media.update(((r, o), h) for r, o, h in data["served_media"])
            self.asset_store.restore(data["assets"])

    def save(self) -> None:
        """Write the state to ``state_file`` (atomically), if there is one."""
        if self.config.state_file is not None:
            persist.write(self.config.state_file, self.dump())


def _seq(run: RunRecord) -> int:
    return run.seq


def _identity(technique: TechniqueDef, request: CreateRequest) -> str:
    """What seeds a run's fate: its key, else its technique and inputs."""
    if request.idempotency_key:
        return f"key:{request.idempotency_key}"
    inputs = [[i.id, i.type, i.value] for i in request.inputs]
    return f"inputs:{technique.slug}:{json.dumps(inputs, sort_keys=True)}"


def _duplicate_problem(status: int, field: str) -> ApiProblem:
    """The ``duplicate_status`` answer to a repeated key (``DUPLICATE_CODES``); a 400 names
    the ``field`` that carried the key."""
    code = DUPLICATE_CODES[status]
    if code == "input_validation_error":
        return invalid([FieldError(field, "Idempotency key has already been used")])
    return ApiProblem(code)

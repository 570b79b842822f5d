"""The emulator's memory: runs, charges, idempotency keys, assets and request counts.

This is what a test asserts on from the server's side ("each job was charged exactly
once": ``charges_by_key()``).  Money follows CONTRACT.md §4/§6: a created run is charged
once at its technique's cost; a repeated idempotency key charges nothing; a create that
fails before the run exists (400, 402, an injected 5xx) charges nothing and leaves the
key free; with ``refund_failed`` a failed run's charge is given back (a negative entry).

Assets live in an ``AssetStore`` (``assets.py``) that shares this state's lock and is
reset with it; ``assets`` is its dict of records and ``assets_by_sha256()`` answers "was
each file uploaded exactly once".

Nothing happens in the background: refunds of runs that failed since the last look are
booked lazily (``settle``) whenever the state is read.  A lock makes the state safe to
read from a test thread while a uvicorn thread serves requests.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from .assets import AssetRecord, AssetStore
from .catalog import Catalog, TechniqueDef, load_catalog
from .config import EmulatorConfig
from .faults import FaultDice
from .problems import ApiProblem
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


@dataclass(frozen=True)
class CreateResult:
    """What a create did: the run, and whether it is an existing run replayed for its key."""

    run: RunRecord
    replayed: bool = False


@dataclass
class _KeyEntry:
    run_id: str
    at: float


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
        self.asset_store = AssetStore(self.config, self.dice, self._lock)
        #: Every asset by id (the store's own dict, so it stays current).
        self.assets: dict[str, AssetRecord] = self.asset_store.records

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
        """How many times each idempotency key was charged (keyless runs are left out)."""
        counts: Counter[str] = Counter(
            c.idempotency_key for c in self.charges if c.kind == "charge" and c.idempotency_key
        )
        return dict(counts)

    def assets_by_sha256(self) -> dict[str, int]:
        """How many assets hold each distinct file, by the SHA-256 of its bytes."""
        return self.asset_store.by_sha256()

    def total_charged(self) -> float:
        """Net USD charged: charges minus refunds."""
        return round(sum(c.amount for c in self.charges), 6)

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
            run.run_id, run.idempotency_key, run.technique, -run.charged, run.ended_at, "refund"
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
            self.balance = self.config.balance
            self.dice.clear()

    # -- runs -------------------------------------------------------------------------

    def create_run(self, technique: TechniqueDef, request: CreateRequest) -> CreateResult:
        """Create and charge a run, or replay the run its idempotency key already made.

        Raises:
            ApiProblem: 409 ``idempotency_duplicate`` (``conflict`` mode) or 402
                ``insufficient_credits``; neither charges anything nor keeps the key.
        """
        with self._lock:
            now = self.now()
            existing = self._run_for_key(request.idempotency_key, now)
            if existing is not None:
                if self.config.idempotency == "conflict":
                    raise ApiProblem("idempotency_duplicate")
                return CreateResult(existing, replayed=True)
            self._check_credit(technique.run_cost)
            run = self._new_run(technique, request, now)
            self._book(run, now)
            return CreateResult(run)

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
        if limit is not None and len(self.runs) >= limit:
            raise ApiProblem("insufficient_credits")
        if self.balance is not None and self.balance + 1e-9 < cost:
            raise ApiProblem("insufficient_credits")

    def _new_run(self, technique: TechniqueDef, request: CreateRequest, now: float) -> RunRecord:
        """A run with its whole timeline decided now: start, end and fate."""
        speed = self.config.speed
        run_seconds = technique.typical_seconds / speed
        ready = now + queue_seconds(technique.typical_seconds) / speed
        start = schedule(ready, run_seconds, list(self.runs.values()), self.config.max_running)
        fate = self.dice.run_fate(self._identity(technique, request))
        end = start + run_seconds * (fate.at_fraction if fate.error_code else 1.0)
        return RunRecord(
            run_id=f"run_{secrets.token_hex(12)}",
            seq=len(self.runs) + 1,
            technique=technique.slug,
            inputs=request.inputs,
            idempotency_key=request.idempotency_key,
            created_at=now,
            started_at=start,
            ended_at=end,
            run_seconds=run_seconds,
            cost=technique.run_cost,
            charged=technique.run_cost,
            error_code=fate.error_code,
            error_message=failure_message(fate.error_code) if fate.error_code else None,
            callback_url=request.callback_url,
        )

    @staticmethod
    def _identity(technique: TechniqueDef, request: CreateRequest) -> str:
        """What seeds a run's fate: its key, else its technique and inputs."""
        if request.idempotency_key:
            return f"key:{request.idempotency_key}"
        inputs = [[i.id, i.type, i.value] for i in request.inputs]
        return f"inputs:{technique.slug}:{json.dumps(inputs, sort_keys=True)}"

    def _book(self, run: RunRecord, now: float) -> None:
        """Store the run, charge it once, remember its key."""
        self.runs[run.run_id] = run
        self._charges.append(
            Charge(run.run_id, run.idempotency_key, run.technique, run.charged, now)
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

    def list_runs(self, technique: str | None = None, status: str | None = None) -> list[RunRecord]:
        """Runs newest first, optionally of one technique (slug) and in one status."""
        self.settle()
        now = self.now()
        with self._lock:
            runs = sorted(self.runs.values(), key=lambda r: r.seq, reverse=True)
        return [
            r
            for r in runs
            if (technique is None or r.technique == technique)
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
            "error_code": run.error_code,
            "created_at": run.created_at,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "inputs": [{"id": i.id, "type": i.type, "value": i.value} for i in run.inputs],
        }


def _seq(run: RunRecord) -> int:
    return run.seq

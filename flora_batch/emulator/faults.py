"""Faults on demand: a seeded ``FaultPlan`` of probabilities, and the dice that apply it.

Every decision is drawn from ``random.Random`` seeded with the plan's ``seed`` plus the
endpoint and the request's ordinal on that endpoint (``"{seed}|{endpoint}|{n}"``), so the
n-th create always meets the same fault whatever other requests are interleaved with it,
and a failing test replays exactly.  Run-level failures are seeded by the run's identity
(idempotency key, or technique and inputs), so one job fails the same way on every replay.

A request suffers at most one of the exclusive faults that apply to its endpoint (one
uniform draw walks the cumulative probabilities in a fixed order); ``slow`` is drawn
separately and can combine with any of them.  ``FaultDice.inject`` queues forced faults
that win over the dice, for tests that need one particular fault on the next request.

Two asset faults strike later, not on the request that rolls: ``fetch_refused`` (a
``source`` URL asset ends ``failed``) and ``ingest_failure`` (a completed signed upload
ends ``failed``).  ``FaultDice.fate`` decides them, seeded by the source URL or the
uploaded bytes' hash, so they too replay exactly.

Command-line spelling (``FaultPlan.parse``): comma-separated ``name=value`` pairs named
like the fields, e.g. ``"seed=7,rate_limit=0.1,drop_after_create=0.05"``; lists use ``|``
(``failure_codes=provider_error|model_timeout``) and ``none`` clears an optional value.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any


class FaultKind(StrEnum):
    """One kind of injected fault; the value is the name used by ``inject`` and in logs."""

    RATE_LIMIT = "rate_limit"  # 429 rate_limited, with or without retry-after
    BAD_GATEWAY = "bad_gateway"  # 502 with an HTML body, as a gateway in front would send
    ERROR_BEFORE_CREATE = "error_before_create"  # 500 unknown_error; no run; key released
    UNAVAILABLE_BEFORE_CREATE = "unavailable_before_create"  # 503 service_unavailable; ditto
    ERROR_AFTER_CREATE = "error_after_create"  # 500 after the run was created and charged
    DROP_AFTER_CREATE = "drop_after_create"  # connection dropped after create and charge
    POLL_ERROR = "poll_error"  # 500 or 503 on a run read
    TRUNCATE_MEDIA = "truncate_media"  # Content-Length says N, fewer bytes arrive
    EXPIRE_MEDIA = "expire_media"  # media URL answers 403 as if expired
    INSUFFICIENT_CREDITS = "insufficient_credits"  # 402 on a create (forced only)
    SLOW = "slow"  # the response is delayed by slow_seconds
    RUN_FAILURE = "run_failure"  # the created run ends ``failed``
    ERROR_BEFORE_ASSET_CREATE = "error_before_asset_create"  # 500 before an asset exists
    ERROR_AFTER_ASSET_CREATE = "error_after_asset_create"  # 500 after the asset was made
    DROP_AFTER_ASSET_CREATE = "drop_after_asset_create"  # connection dropped after it was made
    STORAGE_ERROR = "storage_error"  # the fake storage answers 500 or 503; no bytes kept
    FETCH_REFUSED = "fetch_refused"  # a source-URL asset ends ``failed`` (fetch refused)
    INGEST_FAILURE = "ingest_failure"  # a completed signed upload ends ``failed``


#: The exclusive faults each endpoint class can suffer, in the order the dice walk them.
APPLICABLE: dict[str, tuple[FaultKind, ...]] = {
    "create": (
        FaultKind.RATE_LIMIT,
        FaultKind.BAD_GATEWAY,
        FaultKind.ERROR_BEFORE_CREATE,
        FaultKind.UNAVAILABLE_BEFORE_CREATE,
        FaultKind.ERROR_AFTER_CREATE,
        FaultKind.DROP_AFTER_CREATE,
        FaultKind.INSUFFICIENT_CREDITS,
    ),
    "poll": (FaultKind.RATE_LIMIT, FaultKind.BAD_GATEWAY, FaultKind.POLL_ERROR),
    "read": (FaultKind.RATE_LIMIT, FaultKind.BAD_GATEWAY),
    "media": (FaultKind.TRUNCATE_MEDIA, FaultKind.EXPIRE_MEDIA),
    "asset_create": (
        FaultKind.RATE_LIMIT,
        FaultKind.BAD_GATEWAY,
        FaultKind.ERROR_BEFORE_ASSET_CREATE,
        FaultKind.ERROR_AFTER_ASSET_CREATE,
        FaultKind.DROP_AFTER_ASSET_CREATE,
    ),
    "asset_action": (FaultKind.RATE_LIMIT, FaultKind.BAD_GATEWAY),
    "storage": (FaultKind.STORAGE_ERROR,),
}
#: Faults decided by ``FaultDice.fate`` when an asset is made or completed, not per request.
DELAYED = (FaultKind.FETCH_REFUSED, FaultKind.INGEST_FAILURE)

DEFAULT_FAILURE_CODES = ("provider_error", "model_timeout", "safety_blocked", "GPU_PROVIDER_ERROR")


@dataclass(frozen=True, kw_only=True)
class FaultPlan:
    """Probabilities (0..1) and parameters of the injected faults; all zero by default.

    Args:
        seed: seeds every draw.
        rate_limit: share of API requests answered 429 ``rate_limited``.
        retry_after: seconds sent in ``retry-after`` on a 429; ``None`` sends no header.
        retry_after_missing: share of 429s sent without any retry header.
        retry_after_ms: also send ``retry-after-ms`` (what FLORA's SDKs read first).
        bad_gateway: share of API requests answered 502 with a non-JSON body.
        error_before_create: share of creates answered 500 before a run exists.
        unavailable_before_create: share of creates answered 503 before a run exists.
        error_after_create: share of creates answered 500 after the run was created and charged.
        drop_after_create: share of creates whose connection drops after create and charge.
        poll_error: share of run reads answered 500 ``unknown_error`` or 503.
        slow: share of requests delayed by ``slow_seconds`` (an async sleep).
        slow_seconds: the delay of a slow response, in real seconds.
        truncate_media: share of media downloads cut short under a full Content-Length.
        expire_media: share of media downloads answered 403 as if the URL had expired.
        insufficient_after: after this many runs were created, every create is 402.
        run_failure: share of created runs that end ``failed``.
        failure_codes: the run-level error codes a failing run picks from.
        error_before_asset_create: share of asset creates answered 500 before an asset exists.
        error_after_asset_create: share of asset creates answered 500 after the asset was made.
        drop_after_asset_create: share of asset creates whose connection drops after it.
        storage_error: share of signed-upload transfers the fake storage answers 5xx.
        fetch_refused: share of ``source`` URLs whose fetch fails (the asset ends ``failed``).
        ingest_failure: share of completed signed uploads that end ``failed``.
    """

    seed: int = 0
    rate_limit: float = 0.0
    retry_after: float | None = 1.0
    retry_after_missing: float = 0.0
    retry_after_ms: bool = False
    bad_gateway: float = 0.0
    error_before_create: float = 0.0
    unavailable_before_create: float = 0.0
    error_after_create: float = 0.0
    drop_after_create: float = 0.0
    poll_error: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 1.0
    truncate_media: float = 0.0
    expire_media: float = 0.0
    insufficient_after: int | None = None
    run_failure: float = 0.0
    failure_codes: tuple[str, ...] = DEFAULT_FAILURE_CODES
    error_before_asset_create: float = 0.0
    error_after_asset_create: float = 0.0
    drop_after_asset_create: float = 0.0
    storage_error: float = 0.0
    fetch_refused: float = 0.0
    ingest_failure: float = 0.0

    def __post_init__(self) -> None:
        """Probabilities outside 0..1 are typos; fail loudly at construction."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "float" and f.name not in ("slow_seconds",) and not 0 <= value <= 1:
                raise ValueError(f"fault {f.name} is a probability in 0..1, not {value!r}")
        if self.slow_seconds < 0:
            raise ValueError("slow_seconds must not be negative")
        if self.run_failure and not self.failure_codes:
            raise ValueError("run_failure needs at least one failure code")

    def probability(self, kind: FaultKind) -> float:
        """The plan's probability for one exclusive fault kind (0 for forced-only kinds)."""
        value = getattr(self, kind.value, 0.0)
        return float(value) if isinstance(value, float) else 0.0

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """Read the compact command-line spelling, e.g. ``"seed=7,rate_limit=0.1"``.

        Raises:
            ValueError: for an unknown name, a malformed pair or a bad value.
        """
        types = {f.name: str(f.type) for f in fields(cls)}
        values: dict[str, Any] = {}
        for pair in filter(None, (p.strip() for p in text.split(","))):
            name, sep, raw = pair.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in types:
                known = ", ".join(types)
                raise ValueError(f"unknown fault setting {pair!r}; known: {known}")
            values[name] = _convert(name, types[name], raw.strip())
        return cls(**values)

    def to_string(self) -> str:
        """The compact spelling of the settings that differ from the defaults."""
        default = FaultPlan()
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                parts.append(f"{f.name}={_format(value)}")
        return ",".join(parts)


def _convert(name: str, type_name: str, raw: str) -> Any:
    """One value of the compact spelling, converted to the field's type."""
    try:
        if raw.lower() == "none" and "None" in type_name:
            return None
        if type_name.startswith("tuple"):
            return tuple(filter(None, (c.strip() for c in raw.split("|"))))
        if type_name == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if type_name.startswith("int"):
            return int(raw)
        return float(raw)
    except ValueError:
        raise ValueError(f"bad value {raw!r} for fault setting {name} ({type_name})") from None


def _format(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "|".join(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Roll:
    """What the dice decided for one request: at most one exclusive fault, and a delay.

    ``variant`` is a second uniform draw used to pick between flavours of the fault
    (500 or 503 on a poll; a 429 with or without its header).
    """

    fault: FaultKind | None = None
    delay: float = 0.0
    variant: float = 0.0


@dataclass(frozen=True)
class RunFate:
    """How a run ends, decided once at create: failure code (None = success) and when."""

    error_code: str | None = None
    at_fraction: float = 1.0


@dataclass
class _Forced:
    kind: FaultKind
    remaining: int
    code: str | None = None


class FaultDice:
    """Applies a ``FaultPlan``; also holds faults forced by tests through ``inject``."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._forced: list[_Forced] = []

    def inject(self, kind: FaultKind | str, *, times: int = 1, code: str | None = None) -> None:
        """Force ``kind`` on the next ``times`` requests it applies to (before any dice).

        ``code`` picks the error code of a forced ``run_failure``.
        """
        self._forced.append(_Forced(FaultKind(kind), times, code))

    def clear(self) -> None:
        """Forget forced faults (``reset`` calls this)."""
        self._forced.clear()

    def roll(self, endpoint: str, ordinal: int, endpoint_class: str) -> Roll:
        """Decide the fault for the ``ordinal``-th request to ``endpoint``."""
        rng = random.Random(f"{self.plan.seed}|{endpoint}|{ordinal}")
        draw, variant, slow_draw = rng.random(), rng.random(), rng.random()
        delay = self.plan.slow_seconds if slow_draw < self.plan.slow else 0.0
        if self._take(FaultKind.SLOW):
            delay = self.plan.slow_seconds
        applicable = APPLICABLE.get(endpoint_class, ())
        forced = next((f for f in self._forced if f.kind in applicable), None)
        if forced is not None:
            self._consume(forced)
            return Roll(forced.kind, delay, variant)
        return Roll(self._pick(draw, applicable), delay, variant)

    def run_fate(self, identity: str, *, may_force: bool = True) -> RunFate:
        """Whether and when a new run fails, seeded by the run's identity.

        ``may_force=False`` leaves forced failures for the next run of ours (a run
        another client made must not use up a test's ``inject("run_failure")``).
        """
        forced = next((f for f in self._forced if f.kind is FaultKind.RUN_FAILURE), None)
        forced = forced if may_force else None
        rng = random.Random(f"{self.plan.seed}|run|{identity}")
        draw, pick, when = rng.random(), rng.random(), rng.uniform(0.2, 0.9)
        codes = self.plan.failure_codes or DEFAULT_FAILURE_CODES
        if forced is not None:
            self._consume(forced)
            return RunFate(forced.code or codes[int(pick * len(codes))], when)
        if draw < self.plan.run_failure:
            return RunFate(codes[int(pick * len(codes))], when)
        return RunFate()

    def company(self, ordinal: int, chance: float, burst: int, spread: float) -> tuple[float, ...]:
        """Offsets (seconds from ours) of the runs others make beside our ``ordinal``-th.

        Seeded like the request faults (``"{seed}|other_clients|{ordinal}"``), so the
        same batch meets the same neighbours on every replay.
        """
        if chance <= 0:
            return ()
        rng = random.Random(f"{self.plan.seed}|other_clients|{ordinal}")
        if rng.random() >= chance:
            return ()
        return tuple(rng.uniform(-spread, spread) for _ in range(burst))

    def fate(self, kind: FaultKind, identity: str) -> bool:
        """Whether delayed fault ``kind`` (``DELAYED``) strikes the object ``identity``."""
        forced = next((f for f in self._forced if f.kind is kind), None)
        if forced is not None:
            self._consume(forced)
            return True
        rng = random.Random(f"{self.plan.seed}|{kind.value}|{identity}")
        return rng.random() < self.plan.probability(kind)

    def _pick(self, draw: float, applicable: tuple[FaultKind, ...]) -> FaultKind | None:
        edge = 0.0
        for kind in applicable:
            edge += self.plan.probability(kind)
            if draw < edge:
                return kind
        return None

    def _take(self, kind: FaultKind) -> bool:
        forced = next((f for f in self._forced if f.kind is kind), None)
        if forced is None:
            return False
        self._consume(forced)
        return True

    def _consume(self, forced: _Forced) -> None:
        forced.remaining -= 1
        if forced.remaining <= 0:
            self._forced.remove(forced)

"""How an emulator behaves: one frozen ``EmulatorConfig``, plus a manual clock for tests.

Where CONTRACT.md and ASSETS.md say FLORA's sources disagree (idempotency, field dialect,
create status, the shape of signed-upload instructions), the emulator takes an option
instead of picking a side, so the client can be tested against every variant.  All
durations in the config are seconds of the emulator's clock; only the catalog's
per-technique run times and the assets' fetch and ingest times are divided by ``speed``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from flora_batch import wire

from .faults import FaultPlan

Dialect = Literal["snake", "camel"]
IdempotencyMode = Literal["replay", "conflict"]
KeyCarrier = Literal["body", "header", "both"]
UploadShape = Literal["snake", "camel", "serialized", "bare"]
QuoteMode = Literal["exact", "zero", "missing"]

#: The switches that make the emulator as hard as the contract allows (all off by default).
HARD_SWITCHES = (
    "clock_skew",
    "bill_factor",
    "quote",
    "create_latency",
    "merge_concurrent_creates",
    "other_clients",
    "other_clients_spread",
    "other_clients_burst",
    "history_delay",
    "history_page_cap",
    "duplicate_status",
    "media_quirks",
)

#: Statuses ``duplicate_status`` may take, and the error code each answers with.
DUPLICATE_CODES = {400: "input_validation_error", 404: "not_found", 422: "idempotency_conflict"}

DEFAULT_API_KEY = "sk_test_emulator"
#: Fixed identifiers of the one workspace and project the emulator pretends to have.
WORKSPACE_ID = "ws_emulator"
PROJECT_ID = "prj_emulator"
#: The direct multipart upload limit of ASSETS.md §8 ("4 MB"; the helpers use 4 MiB).
DIRECT_UPLOAD_LIMIT = 4 * 1024 * 1024

Clock = Callable[[], float]


@dataclass(frozen=True, kw_only=True)
class EmulatorConfig:
    """Every switch of the emulator; the defaults follow the seed document and the OpenAPI files.

    Args:
        api_key: the only bearer key accepted.
        dialect: ``snake`` (OpenAPI files, USD) or ``camel`` (older docs, integer credits).
        create_status: HTTP status of a successful create, 200 or 201.
        idempotency: ``replay`` returns the existing run for a repeated key (seed doc);
            ``conflict`` answers 409 ``idempotency_duplicate`` without the run id (spec).
        idempotency_carrier: where the key is read: the body's ``idempotency_key``, the
            ``Idempotency-Key`` header, or ``both`` (body first).
        key_window: seconds after which a key is forgotten; ``None`` keeps keys forever.
        speed: divides every technique's run time, so demos and tests run fast.
        balance: USD credit left; ``None`` means unlimited.  A create it cannot cover is 402.
        refund_failed: failed runs get their charge back (a negative charge entry).
        late_charge: seconds after a run turns terminal during which ``charged_cost`` is
            absent from the run object (CONTRACT.md §4: eventually consistent).
        allowed_hosts: input media hosts accepted (``wire.check_media_url``).
        faults: the seeded fault plan.
        media_ttl: seconds an output URL stays valid; ``None`` means forever.
        max_running: at most this many runs in ``running`` at once, the rest queue FIFO.
        clock: returns the time in float seconds; ``None`` means ``time.time``.
        workspace_id: the one workspace the key may use (``POST /assets`` names it; any
            other well-formed ``ws_`` id is 403 ``forbidden``).
        asset_idempotency: ``replay`` or ``conflict`` for a repeated ``Idempotency-Key``
            on the asset routes; ``None`` follows ``idempotency``.  ASSETS.md §9 says
            FLORA answers ``conflict`` (409, no asset id) within a 2 h window.
        fetch_hosts: hosts a ``source`` URL may name (``.example.com`` matches
            subdomains); ``None`` means any public host (ASSETS.md §8: "any public HTTPS").
        refuse_fetch_hosts: hosts whose ``source`` URLs are refused with 400
            ``input_validation_error``, so a client's download-and-upload fallback can be
            tested.  Loopback, private and metadata addresses are always refused.
        direct_upload_limit: the largest multipart (path A) file, in bytes.
        upload_ttl: seconds a signed-upload reservation stays open (``expires_at``).
        upload_shape: how signed-upload instructions are sent: ``snake`` (the spec's
            ``upload`` object), ``camel`` (older docs: ``upload.formFields``/``fileField``,
            no ``method``), ``serialized`` (only ``upload_url``, a JSON string
            ``{"url", "fields"}``) or ``bare`` (only ``upload_url``, a bare URL string,
            which a careful client refuses to guess at).
        storage_rejects_auth: the fake storage answers 400 to an upload that carries an
            ``Authorization`` header (ASSETS.md §3: never send FLORA's key there).
        require_ready_assets: a run input that names one of this emulator's asset URLs
            is refused (400) unless that asset is ``ready`` (ASSETS.md §7).

    The switches below make the emulator as hard as the contract allows; all are off
    by default.

    Args:
        clock_skew: seconds added to every timestamp the API renders (runs' ``created_at``,
            ``started_at``, ``completed_at``; assets' ``created_at`` and ``expires_at``),
            as a server whose clock is off would; the emulator's own clock and the run
            timelines do not move.  May be negative.
        bill_factor: a run is billed this many times its technique's cost (the charge,
            and ``charged_cost`` on a poll): bills are not quotes (CONTRACT.md §3).
        quote: what the technique lookup shows as ``run_cost``: the ``exact`` cost,
            ``zero``, or the field ``missing``.  Runs are billed at the real cost times
            ``bill_factor`` whatever it shows; a create's ``charged_cost`` is this quote.
        create_latency: real seconds (an async sleep) a create spends between looking its
            idempotency key up and booking the run (charging it, binding its key).  The
            run's ``created_at`` is still when the create arrived.
        merge_concurrent_creates: a create whose key is held by a create still inside its
            latency waits for it, then gets the usual duplicate answer.  False: both
            execute and both are billed (CONTRACT.md §6: "not coalescing").
        other_clients: chance (seeded by ``faults.seed``) that each of our creates is
            accompanied by runs of the same technique made by someone else in the same
            workspace: keyless, billed to the workspace, listed in the history, marked
            ``foreign`` in the emulator's books.
        other_clients_spread: those runs are stamped within ± this many seconds of ours;
            one stamped in the future shows in the history only once the clock gets there.
        other_clients_burst: how many such runs come each time.
        history_delay: a run shows in ``GET /technique-runs`` only this many seconds after
            its ``created_at`` (eventual visibility).
        history_page_cap: at most this many items per history page, whatever ``limit`` asks.
        duplicate_status: 400, 404 or 422: a create repeating a live key is answered with
            that status (``input_validation_error``, ``not_found``,
            ``idempotency_conflict``), creating and charging nothing, instead of the
            replay or 409 of ``idempotency``.
        media_quirks: SVG outputs start with an XML prolog, and AVIF and HEIC outputs are
            served as ``application/octet-stream``.
        state_file: a JSON file holding the whole state: loaded at start if it exists, and
            rewritten atomically after every request that may change state, so a killed
            emulator forgets nothing it answered.
    """

    api_key: str = DEFAULT_API_KEY
    dialect: Dialect = "snake"
    create_status: int = 201
    idempotency: IdempotencyMode = "replay"
    idempotency_carrier: KeyCarrier = "body"
    key_window: float | None = None
    speed: float = 1.0
    balance: float | None = None
    refund_failed: bool = False
    late_charge: float = 0.0
    allowed_hosts: tuple[str, ...] = wire.DEFAULT_ALLOWED_HOSTS
    faults: FaultPlan = field(default_factory=FaultPlan)
    media_ttl: float | None = None
    max_running: int | None = None
    clock: Clock | None = None
    workspace_id: str = WORKSPACE_ID
    asset_idempotency: IdempotencyMode | None = None
    fetch_hosts: tuple[str, ...] | None = None
    refuse_fetch_hosts: tuple[str, ...] = ()
    direct_upload_limit: int = DIRECT_UPLOAD_LIMIT
    upload_ttl: float = 900.0
    upload_shape: UploadShape = "snake"
    storage_rejects_auth: bool = True
    require_ready_assets: bool = True
    clock_skew: float = 0.0
    bill_factor: float = 1.0
    quote: QuoteMode = "exact"
    create_latency: float = 0.0
    merge_concurrent_creates: bool = True
    other_clients: float = 0.0
    other_clients_spread: float = 1.0
    other_clients_burst: int = 1
    history_delay: float = 0.0
    history_page_cap: int | None = None
    duplicate_status: int | None = None
    media_quirks: bool = False
    state_file: Path | None = None

    def __post_init__(self) -> None:
        """Refuse settings the emulator cannot honour, at construction rather than mid-test."""
        _check_choice("dialect", self.dialect, ("snake", "camel"))
        _check_choice("create_status", self.create_status, (200, 201))
        _check_choice("idempotency", self.idempotency, ("replay", "conflict"))
        _check_choice("idempotency_carrier", self.idempotency_carrier, ("body", "header", "both"))
        _check_choice("asset_idempotency", self.asset_idempotency, (None, "replay", "conflict"))
        _check_choice("upload_shape", self.upload_shape, ("snake", "camel", "serialized", "bare"))
        if not re.fullmatch(r"ws_\S+", self.workspace_id):
            raise ValueError(f"workspace_id must look like ws_…, not {self.workspace_id!r}")
        if self.direct_upload_limit < 1:
            limit = self.direct_upload_limit
            raise ValueError(f"direct_upload_limit must be positive, not {limit!r}")
        if self.upload_ttl <= 0:
            raise ValueError(f"upload_ttl must be positive, not {self.upload_ttl!r}")
        if self.speed <= 0:
            raise ValueError(f"speed must be positive, not {self.speed!r}")
        if self.max_running is not None and self.max_running < 1:
            raise ValueError(f"max_running must be at least 1, not {self.max_running!r}")
        for name in ("key_window", "media_ttl", "balance"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, not {value!r}")
        for name in ("late_charge", "create_latency", "other_clients_spread", "history_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)!r}")
        self._check_hard_switches()

    def _check_hard_switches(self) -> None:
        """The switches that make the emulator harder (see the class docstring)."""
        _check_choice("quote", self.quote, ("exact", "zero", "missing"))
        _check_choice("duplicate_status", self.duplicate_status, (None, *DUPLICATE_CODES))
        if not (self.bill_factor > 0 and math.isfinite(self.bill_factor)):
            raise ValueError(f"bill_factor must be positive, not {self.bill_factor!r}")
        if not 0 <= self.other_clients <= 1:
            raise ValueError(f"other_clients is a probability in 0..1, not {self.other_clients!r}")
        if self.other_clients_burst < 1:
            burst = self.other_clients_burst
            raise ValueError(f"other_clients_burst must be at least 1, not {burst!r}")
        if self.history_page_cap is not None and self.history_page_cap < 1:
            cap = self.history_page_cap
            raise ValueError(f"history_page_cap must be at least 1, not {cap!r}")
        if not math.isfinite(self.clock_skew):
            raise ValueError(f"clock_skew must be a finite number, not {self.clock_skew!r}")

    def hard_switches(self) -> dict[str, object]:
        """The ``HARD_SWITCHES`` set away from their defaults, by name."""
        default = EmulatorConfig()
        return {
            name: getattr(self, name)
            for name in HARD_SWITCHES
            if getattr(self, name) != getattr(default, name)
        }

    def now(self) -> float:
        """The current time on the configured clock, in seconds."""
        return (self.clock or time.time)()

    @property
    def asset_idempotency_mode(self) -> IdempotencyMode:
        """What a repeated ``Idempotency-Key`` does on the asset routes."""
        return self.asset_idempotency or self.idempotency


def _check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices!r}, not {value!r}")


class ManualClock:
    """A clock that only moves when told to, so lifecycle tests never sleep.

    ``ManualClock()()`` returns the current time; ``advance(s)`` moves it forward.
    It starts on 2026-01-01 so timestamps look like real unix times.
    """

    def __init__(self, start: float = 1_767_225_600.0) -> None:
        self.time = start

    def __call__(self) -> float:
        return self.time

    def advance(self, seconds: float) -> float:
        """Move the clock forward and return the new time."""
        if seconds < 0:
            raise ValueError("a clock does not run backwards")
        self.time += seconds
        return self.time

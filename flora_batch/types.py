"""Plain values passed between the stages: frozen dataclasses and enums, no behaviour with I/O.

Every stage speaks these types, so the manifest, the planner, the ledger, the client
and the worker can be tested one at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NewType

JobKey = NewType("JobKey", str)

#: Run input types the create endpoint accepts (CONTRACT.md §3).
RUN_INPUT_TYPES = ("text", "imageUrl", "videoUrl")
#: Slot types a technique may declare (CONTRACT.md §1).
SLOT_TYPES = ("text", "imageUrl", "videoUrl", "audioUrl", "documentUrl")
MEDIA_TYPES = ("imageUrl", "videoUrl", "audioUrl", "documentUrl")


class JobState(StrEnum):
    """Where a job stands.  The ledger only moves a job along the arrows of docs/design.md."""

    PLANNED = "planned"  # recorded, nothing sent: safe to submit
    SUBMITTING = "submitting"  # key committed, the create may have left: repeat only with the key
    RUNNING = "running"  # run id known: poll, never create
    DOWNLOADING = "downloading"  # run completed, outputs known: fetch files
    DONE = "done"  # every output on disk and verified
    FAILED = "failed"  # the run failed or FLORA refused the inputs; see error_code
    NEEDS_RECONCILE = "needs_reconcile"  # a run exists for the key but its id is unknown
    UNRESOLVED = "unresolved"  # reconciliation could not tell: the user decides

    @property
    def terminal(self) -> bool:
        """No more work happens on its own for a job in this state."""
        return self in (JobState.DONE, JobState.FAILED, JobState.UNRESOLVED)


class RunStatus(StrEnum):
    """The remote run's status field (CONTRACT.md §4); anything else is treated as pending."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class IOSlot:
    """One input or output slot of a technique."""

    id: str
    type: str
    name: str = ""
    description: str = ""
    optional: bool = False
    aspect_ratio: str | None = None
    duration: float | None = None

    @property
    def is_media(self) -> bool:
        """Whether the slot takes or gives a URL rather than text."""
        return self.type in MEDIA_TYPES


@dataclass(frozen=True, slots=True)
class Technique:
    """A technique's schema as ``GET /techniques/{slug}`` describes it, in either dialect."""

    slug: str
    technique_id: str
    name: str
    run_cost: float
    inputs: tuple[IOSlot, ...]
    outputs: tuple[IOSlot, ...]
    description: str = ""
    cost_unit: str = "usd"  # "usd" (snake_case dialect) or "credits" (camelCase dialect)

    def input(self, slot_id: str) -> IOSlot | None:
        """The input slot with this id, if any."""
        return next((s for s in self.inputs if s.id == slot_id), None)


def cost_unit(techniques: Mapping[str, Technique]) -> str:
    """The unit a batch's money is counted in: its techniques' (one API, one dialect)."""
    return next(iter(techniques.values())).cost_unit if techniques else "usd"


def money(value: float, unit: str = "usd") -> str:
    """``$1.23`` for USD, ``123 credits`` for the older dialect's credits; any other unit
    (``mixed``: batches that disagree) is named after the number."""
    if unit == "usd":
        return f"${value:,.2f}"
    return f"{value:,.0f} credits" if unit == "credits" else f"{value:,.2f} ({unit})"


@dataclass(frozen=True, slots=True)
class RunInput:
    """One entry of a create request's ``inputs`` array."""

    id: str
    type: str
    value: str


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One paid run the batch wants: a row pushed through one technique.

    ``row`` holds the row's cells as strings, for naming outputs and for the report;
    ``row_index`` is the row's position in the input (0-based), ``occurrence`` tells
    identical rows apart: 0, 1, 2... in row order, or -1 (``keys.BY_ROW_ID``) for an
    identical job told apart by its ``row_id``.
    """

    batch: str
    technique: str
    inputs: tuple[RunInput, ...]
    row_index: int
    row_id: str | None = None
    occurrence: int = 0
    row: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    source: str = ""  # "file:line" of the row, for messages
    output_name: str = "{technique}/{row}-{output_id}{ext}"


@dataclass(frozen=True, slots=True)
class RunOutput:
    """One output of a completed run; for ``text`` outputs ``url`` holds the text."""

    output_id: str
    type: str
    url: str


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run as FLORA reports it, normalised from either dialect."""

    run_id: str
    status: str
    progress: float = 0.0
    created_at: float | None = None
    started_at: float | None = None
    completed_at: float | None = None
    charged_cost: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    outputs: tuple[RunOutput, ...] = ()
    poll_url: str | None = None
    technique_id: str | None = None
    request_id: str | None = None

    @property
    def terminal(self) -> bool:
        """``completed`` or ``failed``: the only terminal signals."""
        return self.status in (RunStatus.COMPLETED, RunStatus.FAILED)


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """A downloaded (or pending) output as the ledger keeps it."""

    output_id: str
    type: str
    url: str
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as the ledger holds it.

    ``key`` is the job's identity (``keys.job_key``); ``idempotency_key`` is what the
    current attempt sends: the same as ``key`` on attempt 1, ``key + "-r<n>"`` after.
    """

    key: JobKey
    idempotency_key: str
    batch: str
    technique: str
    row_index: int
    row_id: str | None
    state: JobState
    inputs: tuple[RunInput, ...]
    row: dict[str, Any]
    output_name: str
    run_id: str | None = None
    attempt: int = 1
    base_key: str | None = None
    quoted_cost: float | None = None
    charged_cost: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_category: str | None = None
    request_ids: tuple[str, ...] = ()
    submitted_at: float | None = None  # first time a create with this key left (epoch s)
    updated_at: float | None = None
    completed_at: float | None = None
    outputs: tuple[OutputRecord, ...] = ()
    source: str = ""
    worker_id: str | None = None  # the `flora-batch worker` holding (or that finished) it
    lease_until: float | None = None  # that worker's lease (epoch s); others claim it after


@dataclass(frozen=True, slots=True)
class SavedJob:
    """A ``done`` job as a resume needs it: its run, its bill, its files; no row, no inputs.

    A resumed batch of 100,000 done jobs only checks that their files are still there:
    full ``JobRecord`` s for all of them were most of its time and memory.
    """

    key: JobKey
    run_id: str | None
    charged_cost: float | None
    files: tuple[tuple[str | None, int | None, str | None], ...]  # (path, size, sha256) each


class UploadState(StrEnum):
    """Where an input file's upload stands (the ledger's ``uploads`` table; ``uploads.py``)."""

    PLANNED = "planned"  # recorded, nothing sent: safe to create the asset
    UPLOADING = "uploading"  # key committed: the create may have left; asset id once known
    READY = "ready"  # FLORA said the asset is ready: its URL may go into runs
    FAILED = "failed"  # this attempt failed for sure; the next run tries with a new key


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """One distinct input file (or web image) and its FLORA asset, as the ledger holds it.

    ``sha256`` is the row's identity: the SHA-256 (hex) of a file's bytes, or
    ``url:<normalized url>`` for a web image that FLORA fetches itself (``sources.py``).
    ``via`` is the path taken (``direct``, ``signed_url`` or ``url``); ``step`` how far a
    signed upload got (``reserved``, ``transferred``, ``completed``).
    """

    sha256: str
    source: str  # the local path or the URL the file came from (the first one seen)
    file_name: str  # the name the asset gets in FLORA (it carries a hash tag)
    workspace_id: str
    state: UploadState
    idempotency_key: str
    size: int | None = None
    content_type: str | None = None
    attempt: int = 1
    via: str | None = None
    step: str | None = None
    asset_id: str | None = None
    url: str | None = None
    error: str | None = None
    sent_at: float | None = None  # first create sent with the current idempotency key
    created_at: float | None = None
    updated_at: float | None = None
    ready_at: float | None = None

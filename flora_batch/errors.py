"""One exception tree for everything flora-batch can raise.

::

    FloraError
    ├── UsageError                 bad flags or arguments (exit 2)
    ├── ManifestError(path, line, column)   a problem in a manifest or its rows (exit 2)
    │   └── ManifestProblems       several ManifestErrors reported at once
    ├── ConfigError                settings, environment, API key format (exit 2)
    ├── LedgerError                the ledger database cannot be used
    │   ├── LedgerBusy             another run holds this ledger (exit 5)
    │   ├── LedgerConflict(key)    an illegal state transition or a duplicate key
    │   │   └── LeaseLost          another worker holds the job now (cluster mode)
    │   └── LedgerTooNew           the ledger was written by a newer flora-batch
    ├── ResultsError               the results folder cannot be written
    ├── UploadError                an input file could not be made a FLORA asset (its jobs wait)
    ├── BudgetExhausted            max_cost reached (exit 4)
    └── RemoteError(request_id)    anything the FLORA API or the network said
        ├── TransportError         connect/read failures, timeouts (retryable)
        │   └── AmbiguousCreate    a create whose outcome is unknown
        ├── ApiError(status, code, fields)   a non-2xx response with the error envelope
        │   ├── InvalidJson              400 invalid_json
        │   ├── InvalidInput             400 input_validation_error
        │   ├── AuthError                401/403 (unauthorized, invalid_api_key, forbidden)
        │   ├── NotFound                 404 not_found
        │   ├── InsufficientCredits      402 insufficient_credits: stop the batch (exit 3)
        │   ├── IdempotencyDuplicate     409 idempotency_duplicate: the run exists, id unknown
        │   ├── IdempotencyConflict      422 idempotency_conflict
        │   ├── RateLimited(retry_after) 429 rate_limited (retryable)
        │   └── ServerError              5xx (retryable)
        ├── ProtocolError          a 2xx response that breaks the contract
        │   └── ResponseRefused    an output we will not keep: too big, not HTTPS, wrong kind
        ├── StorageError(status)   the storage host of a signed upload refused the bytes
        └── RunFailed(code, category)    a run that ended with status "failed"

Each class carries ``retryable``: whether the *same request* may be sent again.
Messages default to the class docstring, which says what to do next.
"""

from __future__ import annotations

from typing import Any, ClassVar

EXIT_OK = 0
EXIT_FAILED_JOBS = 1
EXIT_USAGE = 2
EXIT_STOPPED_BY_API = 3
EXIT_BUDGET = 4
EXIT_LEDGER_BUSY = 5
EXIT_UNRESOLVED = 6
EXIT_LOCAL = 7  # this machine: the results folder or the ledger cannot be used
EXIT_INTERRUPTED = 130


class FloraError(Exception):
    """Something went wrong in flora-batch."""

    retryable: ClassVar[bool] = False
    exit_code: ClassVar[int] = EXIT_FAILED_JOBS

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip().splitlines()[0]
        super().__init__(self.message)


class UsageError(FloraError):
    """The command line is not valid: see --help."""

    exit_code = EXIT_USAGE


class ConfigError(FloraError):
    """A setting is missing or invalid."""

    exit_code = EXIT_USAGE


class ManifestError(FloraError):
    """The manifest has a problem: fix it and run again (nothing was spent)."""

    exit_code = EXIT_USAGE

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        line: int | None = None,
        column: str | int | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        super().__init__(message)

    def location(self) -> str:
        """``file:line[:column]`` as editors and CI annotations understand it."""
        parts = [self.path or "<manifest>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None and str(self.column) != "":
                parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        return f"{self.location()}: {self.message}"


class ManifestProblems(ManifestError):
    """Several problems were found; each is listed with its location."""

    def __init__(self, problems: list[ManifestError]) -> None:
        self.problems = problems
        first = problems[0] if problems else None
        super().__init__(
            f"{len(problems)} problem(s) found",
            path=first.path if first else "",
        )

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class LedgerError(FloraError):
    """The ledger database cannot be used."""

    exit_code = EXIT_LOCAL


class LedgerBusy(LedgerError):
    """Another flora-batch run holds this ledger; wait for it or stop it."""

    exit_code = EXIT_LEDGER_BUSY


class LedgerConflict(LedgerError):
    """A ledger change did not apply: the job was not in the expected state."""

    exit_code = EXIT_FAILED_JOBS  # a job's state, not this machine's disk

    def __init__(self, message: str | None = None, *, key: str = "") -> None:
        self.key = key
        super().__init__(message)


class LeaseLost(LedgerConflict):
    """Another worker holds this job now: this worker's lease on it ran out; leave it be."""


class LedgerTooNew(LedgerError):
    """This ledger was written by a newer flora-batch: upgrade flora-batch to use it."""

    exit_code = EXIT_USAGE


class ResultsError(FloraError):
    """The results folder cannot be written: check the path, permissions and free space."""

    exit_code = EXIT_LOCAL


class UploadError(FloraError):
    """An input file could not be uploaded to FLORA; the jobs that use it were not submitted."""


class BudgetExhausted(FloraError):
    """The batch reached its max_cost; raise the cap to continue."""

    exit_code = EXIT_BUDGET


class RemoteError(FloraError):
    """The FLORA API or the network failed."""

    def __init__(self, message: str | None = None, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        super().__init__(message)


class TransportError(RemoteError):
    """The network failed (connection refused or dropped, timeout); it is safe to try again."""

    retryable = True


class AmbiguousCreate(TransportError):
    """A create may or may not have reached FLORA; only its idempotency key may repeat it.

    ``timed_out``: no answer came in time, so FLORA may still be working on it (a repeat
    must wait until it surely is not: two same-key creates may both run, CONTRACT §6).
    """

    def __init__(
        self, message: str | None = None, *, request_id: str | None = None, timed_out: bool = False
    ) -> None:
        self.timed_out = timed_out
        super().__init__(message, request_id=request_id)


class ProtocolError(RemoteError):
    """FLORA answered with something that breaks its contract."""

    retryable = True


class ResponseRefused(ProtocolError):
    """An output flora-batch will not keep: over the size cap, not HTTPS, or not its type."""

    retryable = False


class StorageError(RemoteError):
    """The storage host of a signed upload refused the file (ASSETS.md §3)."""

    def __init__(self, message: str | None = None, *, status: int = 0) -> None:
        self.status = status
        super().__init__(message)


class ApiError(RemoteError):
    """FLORA refused the request."""

    status: int = 0

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int = 0,
        code: str = "",
        fields: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status = status or self.status
        self.code = code
        self.fields = fields or []
        super().__init__(message, request_id=request_id)

    def __str__(self) -> str:
        rid = f" (request-id {self.request_id})" if self.request_id else ""
        code = f"{self.code}: " if self.code else ""
        return f"{code}{self.message}{rid}"


class InvalidJson(ApiError):
    """FLORA could not parse the request body; this is a flora-batch bug, please report it."""

    status = 400


class InvalidInput(ApiError):
    """FLORA rejected the inputs for this technique: fix the row and run again."""

    status = 400


class AuthError(ApiError):
    """FLORA refused the API key: check FLORA_API_KEY (Settings > API Keys in FLORA)."""

    status = 401
    exit_code = EXIT_STOPPED_BY_API


class NotFound(ApiError):
    """FLORA does not know this technique or run: check the slug and the API key's workspace."""

    status = 404


class InsufficientCredits(ApiError):
    """The FLORA workspace is out of credits: top it up, then run the same command again."""

    status = 402
    exit_code = EXIT_STOPPED_BY_API


class IdempotencyDuplicate(ApiError):
    """FLORA already has a run for this idempotency key but did not say which: reconciling."""

    status = 409


class IdempotencyConflict(ApiError):
    """FLORA has this idempotency key with a different request body."""

    status = 422


class RateLimited(ApiError):
    """FLORA is rate limiting this workspace; slowing down."""

    status = 429
    retryable = True

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(*args, **kwargs)


class ServerError(ApiError):
    """FLORA had an internal error; it is usually safe to try again."""

    status = 500
    retryable = True


class RunFailed(RemoteError):
    """A run finished with status "failed"."""

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str = "",
        category: str = "",
        request_id: str | None = None,
    ) -> None:
        self.code = code
        self.category = category
        super().__init__(message, request_id=request_id)

    @property
    def retryable_run(self) -> bool:
        """Whether running the job again (with a new key) may succeed."""
        return self.category == "retryable"


API_ERRORS: dict[str, type[ApiError]] = {
    "invalid_json": InvalidJson,
    "input_validation_error": InvalidInput,
    "unauthorized": AuthError,
    "invalid_api_key": AuthError,
    "invalid_token": AuthError,
    "forbidden": AuthError,
    "paid_plan_required": AuthError,
    "not_found": NotFound,
    "insufficient_credits": InsufficientCredits,
    "idempotency_duplicate": IdempotencyDuplicate,
    "idempotency_conflict": IdempotencyConflict,
    "rate_limited": RateLimited,
    "unknown_error": ServerError,
    "internal_error": ServerError,
    "service_unavailable": ServerError,
}

STATUS_ERRORS: dict[int, type[ApiError]] = {
    400: InvalidInput,
    401: AuthError,
    402: InsufficientCredits,
    403: AuthError,
    404: NotFound,
    409: IdempotencyDuplicate,
    422: IdempotencyConflict,
    429: RateLimited,
}


def api_error_class(status: int, code: str) -> type[ApiError]:
    """The class for an error response: by code first, then by HTTP status."""
    if code in API_ERRORS:
        return API_ERRORS[code]
    if status >= 500:
        return ServerError
    return STATUS_ERRORS.get(status, ApiError)

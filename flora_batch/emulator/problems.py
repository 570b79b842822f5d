"""The error envelope of CONTRACT.md §5, raised as ``ApiProblem`` anywhere in the emulator.

``conflict`` (409, an invalid asset lifecycle transition) and ``idempotency_conflict``
(422, a repeated key) are docs-only codes, not in the OpenAPI files' enum (ASSETS.md §4,
CONTRACT.md §6); everything else is the spec's enum plus the docs'
``service_unavailable`` and the router's ``method_not_allowed``.

Every non-2xx API answer is ``{"error": {"code", "message", "fields"?}}`` with the HTTP
status the contract gives its code; raising instead of returning keeps the handlers flat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: HTTP status and default message per error code (CONTRACT.md §5).
ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_json": (400, "Malformed JSON in request body."),
    "input_validation_error": (400, "Invalid request."),
    "unauthorized": (401, "Invalid API key."),
    "invalid_api_key": (401, "Invalid API key."),
    "insufficient_credits": (402, "Insufficient credits."),
    "forbidden": (403, "Forbidden."),
    "not_found": (404, "Not found."),
    "method_not_allowed": (405, "Method not allowed."),
    "idempotency_duplicate": (409, "Duplicate idempotency key."),
    "conflict": (409, "Invalid state transition."),  # assets, docs only (ASSETS.md §4, §10)
    "idempotency_conflict": (  # docs only (CONTRACT.md §5, §6)
        422,
        "Idempotency key was already used with a different request.",
    ),
    "rate_limited": (429, "Rate limit exceeded."),
    "unknown_error": (500, "An unknown error occurred."),
    "service_unavailable": (503, "Service temporarily unavailable."),
}


@dataclass(frozen=True)
class FieldError:
    """One entry of ``error.fields``: which field, and what is wrong with it."""

    field: str
    message: str


@dataclass(eq=False)
class ApiProblem(Exception):
    """An API error answer: status and envelope, plus any extra response headers."""

    code: str
    message: str = ""
    fields: list[FieldError] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.message:
            self.message = ERROR_CODES[self.code][1]
        super().__init__(self.message)

    @property
    def status(self) -> int:
        """The HTTP status the contract gives this code."""
        return ERROR_CODES[self.code][0]

    def body(self) -> dict[str, Any]:
        """The JSON envelope; ``fields`` only when there are field-level details."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = [{"field": f.field, "message": f.message} for f in self.fields]
        return {"error": error}


def invalid(fields: list[FieldError]) -> ApiProblem:
    """A 400 ``input_validation_error`` whose message lists every field, ``prompt: Required``."""
    message = "; ".join(f"{f.field}: {f.message}" for f in fields)
    return ApiProblem("input_validation_error", message, fields)

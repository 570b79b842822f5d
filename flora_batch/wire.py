"""The FLORA wire contract (../shared/flora-api/CONTRACT.md): paths and tolerant parsing.

FLORA speaks two dialects: snake_case with costs in USD (current OpenAPI files) and an
older camelCase one with costs in credits.  Everything that reads a response goes
through the parsers here, so the rest of flora-batch sees one shape (``types``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from ._version import __version__
from .errors import ProtocolError
from .types import IOSlot, RunInfo, RunInput, RunOutput, Technique

API_PREFIX = "/api/v1"
DEFAULT_BASE_URL = "https://app.flora.ai/api/v1"


def package_version() -> str:
    """flora-batch's version, for the User-Agent (``_version.py``, which the wheel's
    metadata also reads: one number, never ``0+unknown`` from a checkout)."""
    return __version__


#: Run-level error codes sorted per CONTRACT.md §5.  Unknown codes count as "unknown".
RETRYABLE_RUN_CODES = frozenset(
    {
        "provider_error",
        "model_timeout",
        "internal_error",
        "GENERATION_PROVIDER_TIMEOUT",
        "GPU_PROVIDER_ERROR",
        "GENERATION_GENERIC_ERROR",
        "SERVER_ERROR",
        "GENERATION_FAILED_TO_START",
        "GENERATION_FAILED_TO_UPLOAD",
        "GENERATION_FAILED_TO_UPDATE",
        "GENERATION_FAILED_TO_GET",
        "GENERATION_DOWNSTREAM_SERVICE_ERROR",
        "GENERATION_QUEUE_TOO_LARGE",
        "GENERATION_NO_RESULT",
        "GENERATION_CIRCUIT_BREAKER_OPEN",
    }
)
INPUT_RUN_CODES = frozenset(
    {
        "safety_blocked",
        "input_unreachable",
        "GENERATION_PROMPT_MODERATED",
        "LLM_REFUSAL",
        "GENERATION_INVALID_URL",
        "GENERATION_INVALID_PARAMS",
    }
)
_SAFETY_WORDS = ("safety", "moderat", "refus", "policy", "nsfw")


def classify_run_failure(code: str | None, message: str | None) -> str:
    """Sort a failed run into ``retryable``, ``input``, ``billing`` or ``permanent``.

    Moderation refusals hide behind retryable-looking codes (CONTRACT.md §12.16), so
    the message is read too: a safety refusal is never retried automatically.
    """
    code = code or ""
    text = (message or "").lower()
    if code.startswith("BILLING_") or code in ("GENERATION_NOT_PAID", "insufficient_credits"):
        return "billing"
    if code in INPUT_RUN_CODES or any(w in text for w in _SAFETY_WORDS):
        return "input"
    if code in RETRYABLE_RUN_CODES:
        return "retryable"
    return "permanent"


def _first(data: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in data and data[name] is not None:
            return data[name]
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _said(value: Any, limit: int) -> str | None:
    """Free text from the server, made safe to print, log and store.

    At most ``limit`` characters; control and format characters (terminal escapes,
    newlines, bidi overrides) become ``?``.
    """
    if value is None:
        return None
    text = str(value)[:limit]
    if text.isprintable():  # no "Other" character at all (Cc and Cf among them): as is
        return text
    return "".join("?" if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)


def parse_slot(data: Any) -> IOSlot:
    """One technique input/output slot, in either dialect."""
    if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
        raise ProtocolError(f"technique slot without an id: {data!r:.200}")
    return IOSlot(
        id=data["id"],
        type=str(data.get("type") or "text"),
        name=str(data.get("name") or data["id"]),
        description=str(data.get("description") or ""),
        optional=bool(data.get("optional", False)),
        aspect_ratio=_str(_first(data, "specified_aspect_ratio", "specifiedAspectRatio")),
        duration=_number(_first(data, "specified_duration", "specifiedDuration")),
    )


def parse_technique(data: Any, slug: str = "") -> Technique:
    """A technique object from ``GET /techniques/{slug}`` or a list page."""
    if not isinstance(data, Mapping):
        raise ProtocolError(f"technique is not an object: {data!r:.200}")
    tid = _first(data, "technique_id", "techniqueId", "id")
    snake_cost = _first(data, "run_cost")
    camel_cost = _first(data, "runCost", "credit_cost", "creditCost")
    cost = _number(snake_cost if snake_cost is not None else camel_cost) or 0.0
    unit = "usd" if snake_cost is not None or camel_cost is None else "credits"
    slug = slug or str(data.get("slug") or "") or (str(tid).removeprefix("tech_") if tid else "")
    return Technique(
        slug=slug,
        technique_id=str(tid or f"tech_{slug}"),
        name=str(data.get("name") or slug),
        description=str(data.get("description") or ""),
        run_cost=cost,
        cost_unit=unit,
        inputs=tuple(parse_slot(s) for s in data.get("inputs") or ()),
        outputs=tuple(parse_slot(s) for s in data.get("outputs") or ()),
    )


def parse_output(data: Any) -> RunOutput:
    """One run output, in either dialect."""
    if not isinstance(data, Mapping):
        raise ProtocolError(f"run output is not an object: {data!r:.200}")
    oid = _first(data, "output_id", "outputId", "id")
    url = data.get("url")
    if oid is None or not isinstance(url, str) or not url:
        raise ProtocolError(f"run output without output_id or url: {data!r:.200}")
    return RunOutput(output_id=str(oid), type=str(data.get("type") or "imageUrl"), url=url)


def parse_run(data: Any, request_id: str | None = None) -> RunInfo:
    """A run object from create, poll or the run history, in either dialect."""
    if not isinstance(data, Mapping):
        raise ProtocolError(f"run is not an object: {data!r:.200}", request_id=request_id)
    run_id = _first(data, "run_id", "runId", "technique_run_id", "id")
    if not isinstance(run_id, str) or not run_id:
        raise ProtocolError(f"run without a run id: {data!r:.200}", request_id=request_id)
    technique = data.get("technique")
    tid = (
        _first(technique, "technique_id", "techniqueId") if isinstance(technique, Mapping) else None
    )
    outputs = data.get("outputs") or ()
    if not isinstance(outputs, list | tuple):
        raise ProtocolError("run outputs is not a list", request_id=request_id)
    return RunInfo(
        run_id=run_id,
        status=_said(data.get("status") or "pending", 64) or "pending",
        progress=_number(data.get("progress")) or 0.0,
        created_at=_number(_first(data, "created_at", "createdAt")),
        started_at=_number(_first(data, "started_at", "startedAt")),
        completed_at=_number(_first(data, "completed_at", "completedAt")),
        charged_cost=_number(_first(data, "charged_cost", "chargedCost")),
        error_code=_said(_first(data, "error_code", "errorCode"), 200),
        error_message=_said(_first(data, "error_message", "errorMessage"), 2000),
        outputs=tuple(parse_output(o) for o in outputs),
        poll_url=_str(_first(data, "poll_url", "pollUrl")),
        technique_id=_str(tid),
        request_id=request_id,
    )


def create_body(inputs: tuple[RunInput, ...], idempotency_key: str) -> dict[str, Any]:
    """The body of ``POST /techniques/{slug}/runs``: always async, always keyed."""
    return {
        "inputs": [{"id": i.id, "type": i.type, "value": i.value} for i in inputs],
        "mode": "async",
        "idempotency_key": idempotency_key,
    }


def parse_error(data: Any) -> tuple[str, str, list[dict[str, Any]]]:
    """``(code, message, fields)`` from an error envelope; tolerant of gateways' junk."""
    if isinstance(data, Mapping) and isinstance(data.get("error"), Mapping):
        err = data["error"]
        fields = err.get("fields")
        return (
            _said(err.get("code") or "", 200) or "",
            _said(err.get("message") or "", 2000) or "",
            [f for f in fields if isinstance(f, dict)] if isinstance(fields, list) else [],
        )
    return "", "", []


#: Input media hosts FLORA accepts (seed document, "Input media URL restrictions").
#: Entries starting with "." match any subdomain; the entry "s3" stands for every
#: standard Amazon S3 object hostname (``_is_s3_host``).
DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = (
    "media.flora.ai",
    "storage.googleapis.com",
    ".storage.googleapis.com",
    "ik.imagekit.io",
    "s3",
)


def _is_s3_host(host: str) -> bool:
    """Standard S3 object hostnames: virtual-hosted, path-style, dual-stack, accelerate."""
    if not host.endswith(".amazonaws.com"):
        return False
    labels = host.removesuffix(".amazonaws.com").split(".")
    return any(
        lab == "s3" or lab.startswith("s3-") or lab == "s3-accelerate" or lab == "dualstack"
        for lab in labels
    )


def media_host_allowed(host: str, allowed: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS) -> bool:
    """Whether FLORA accepts input media from this host (CONTRACT.md §9)."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        if entry.startswith(".") and host.endswith(entry) and len(host) > len(entry):
            return True
        if host == entry:
            return True
    return "s3" in allowed and _is_s3_host(host)


def check_media_url(url: str, allowed: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS) -> str | None:
    """Why FLORA would refuse this input media URL, or None if it is acceptable."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "is not a valid URL"
    if parts.scheme != "https":
        return "must be an https:// URL (FLORA refuses http:// and local paths)"
    if not parts.hostname:
        return "has no host"
    if not media_host_allowed(parts.hostname, allowed):
        return (
            f"host {parts.hostname!r} is not one FLORA accepts "
            "(media.flora.ai, Google Cloud Storage, Amazon S3, ImageKit)"
        )
    return None


#: File extensions of the image and video types FLORA takes as input media (ASSETS.md §5),
#: shared by the client's file checks and the emulator's upload handling.
MEDIA_EXTENSIONS: dict[str, str] = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".avif": "image/avif",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
}

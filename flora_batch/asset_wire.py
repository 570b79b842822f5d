"""The assets endpoints' wire format (ASSETS.md): request bodies and tolerant parsing.

FLORA's sources disagree on the signed-upload instructions (ASSETS.md §2, §3): the spec's
``upload`` object (``form_fields``, ``file_field``), an older camelCase one
(``formFields``, ``fileField``, no ``method``), or only ``upload_url`` holding the same
POST policy serialized as JSON ``{"url", "fields"}``.  All three are read here.  A bare
``upload_url`` string is *not* guessed at (the "PUT myth", §3): it becomes
``AssetInfo.upload_problem`` and the upload fails with that message.

Times: ``GET /assets/{id}`` gives ``created_at`` as ISO 8601, list items as an integer
epoch of unstated unit; a number above 10^11 is read as milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import ProtocolError

#: The ``source`` of a signed upload (path C).
SIGNED_URL = "signed-url"


@dataclass(frozen=True, slots=True)
class UploadTarget:
    """Where and how to send a signed upload's bytes: a multipart POST, fields first."""

    url: str
    fields: tuple[tuple[str, str], ...]
    file_field: str = "file"
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class AssetInfo:
    """An asset as create, complete, retry, get or list describe it."""

    asset_id: str
    status: str  # pending_upload | ready | failed
    url: str | None = None
    uploaded_via: str | None = None
    name: str | None = None
    size: int | None = None
    content_type: str | None = None
    created_at: float | None = None  # epoch seconds
    failure_message: str | None = None
    upload: UploadTarget | None = None
    upload_problem: str | None = None  # instructions were given but cannot be followed
    request_id: str | None = None


def create_body(
    source: str,
    workspace_id: str,
    *,
    file_name: str | None = None,
    content_type: str | None = None,
    folder: str | None = None,
) -> dict[str, str]:
    """The JSON body of ``POST /assets`` (paths B and C); no ``idempotency_key`` field."""
    body = {"source": source, "workspace_id": workspace_id}
    extra = {"file_name": file_name, "content_type": content_type, "folder": folder}
    body.update({k: v for k, v in extra.items() if v})
    return body


def form_fields(
    workspace_id: str, *, file_name: str, content_type: str | None, folder: str | None
) -> dict[str, str]:
    """The text parts of a direct multipart upload (path A), sent before the file."""
    fields = {"workspace_id": workspace_id, "file_name": file_name}
    extra = {"content_type": content_type, "folder": folder}
    fields.update({k: v for k, v in extra.items() if v})
    return fields


def _first(data: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if data.get(name) is not None:
            return data[name]
    return None


def _epoch(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) / 1000.0 if value > 1e11 else float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_target(data: Mapping[str, Any]) -> tuple[UploadTarget | None, str | None]:
    """The upload instructions in a create/retry answer, or why they cannot be used."""
    upload = data.get("upload")
    if isinstance(upload, Mapping) and isinstance(upload.get("url"), str):
        fields = _first(upload, "form_fields", "formFields") or {}
        file_field = _first(upload, "file_field", "fileField") or "file"
        method = str(upload.get("method") or "POST").upper()
        return _target(upload["url"], fields, str(file_field), method)
    raw = data.get("upload_url")
    if not isinstance(raw, str) or not raw:
        return None, None
    try:
        decoded = json.loads(raw)
    except ValueError:
        decoded = None
    if isinstance(decoded, Mapping) and isinstance(decoded.get("url"), str):
        return _target(decoded["url"], decoded.get("fields") or {}, "file", "POST")
    return None, (
        "FLORA gave only a bare upload_url, without the POST policy fields; flora-batch "
        "does not guess how to send to it (ASSETS.md §3)"
    )


def _target(
    url: str, fields: Any, file_field: str, method: str
) -> tuple[UploadTarget | None, str | None]:
    if not isinstance(fields, Mapping):
        return None, "the upload instructions' form fields are not a mapping"
    if method != "POST":
        return None, f"the upload instructions ask for {method}; only a multipart POST is known"
    pairs = tuple((str(k), str(v)) for k, v in fields.items())
    return UploadTarget(url=url, fields=pairs, file_field=file_field, method=method), None


def parse_asset(data: Any, request_id: str | None = None) -> AssetInfo:
    """An asset object from any assets endpoint, either casing."""
    if not isinstance(data, Mapping):
        raise ProtocolError(f"asset is not an object: {data!r:.200}", request_id=request_id)
    asset_id = _first(data, "asset_id", "assetId", "id")
    if not isinstance(asset_id, str) or not asset_id:
        raise ProtocolError(f"asset without an asset_id: {data!r:.200}", request_id=request_id)
    target, problem = parse_target(data)
    url = _first(data, "url")
    return AssetInfo(
        asset_id=asset_id,
        status=str(data.get("status") or "pending_upload"),
        url=url if isinstance(url, str) and url else None,
        uploaded_via=_first(data, "uploaded_via", "uploadedVia"),
        name=_first(data, "name", "file_name", "fileName"),
        size=_int(_first(data, "size_bytes", "sizeBytes", "size")),
        content_type=_first(data, "content_type", "contentType"),
        created_at=_epoch(_first(data, "created_at", "createdAt")),
        failure_message=_first(data, "failure_message", "failureMessage"),
        upload=target,
        upload_problem=problem,
        request_id=request_id,
    )


def parse_asset_list(data: Any) -> tuple[list[AssetInfo], str | None]:
    """A ``GET /assets`` page: its items (those with an id) and the next cursor."""
    items = data.get("assets") if isinstance(data, Mapping) else None
    if not isinstance(items, list):
        raise ProtocolError("GET /assets answered without an 'assets' list")
    meta = data.get("meta") if isinstance(data, Mapping) else None
    cursor = meta.get("next_cursor") if isinstance(meta, Mapping) else None
    found = [parse_asset(i) for i in items if isinstance(i, Mapping) and i.get("asset_id")]
    return found, cursor if isinstance(cursor, str) and cursor else None

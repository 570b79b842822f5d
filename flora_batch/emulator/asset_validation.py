"""Checks a ``POST /assets`` request the way ASSETS.md §2 and §8 describe, all at once.

Two bodies reach the same endpoint: JSON (``source`` = ``"signed-url"`` or an https URL;
``additionalProperties: false``) and ``multipart/form-data`` (direct bytes: a ``file``
part and no ``source``).  Every problem becomes one ``{field, message}`` entry of a 400
``input_validation_error``; only a well-formed workspace id that is not the emulator's
own is a 403 ``forbidden`` (the key "lacks access to the workspace", ASSETS.md §10),
checked after everything else passed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from . import uploads
from .config import EmulatorConfig
from .problems import ApiProblem, FieldError, invalid
from .validation import MAX_KEY_LENGTH, json_type, unknown_keys

UploadedVia = Literal["direct", "url", "signed_url"]
SIGNED_URL = "signed-url"
JSON_FIELDS = ("source", "workspace_id", "project_id", "folder", "content_type", "file_name")
FORM_FIELDS = ("workspace_id", "file", "content_type", "file_name", "folder", "project_id")
_OPTIONAL = ("project_id", "folder", "content_type", "file_name")


@dataclass(frozen=True)
class FilePart:
    """The ``file`` part of a multipart upload (or of a storage transfer)."""

    data: bytes
    filename: str | None
    content_type: str | None


@dataclass(frozen=True)
class AssetRequest:
    """A create request that passed validation.

    ``content_type`` is the declared type (``upload_content_type``); for a direct upload
    ``stored_type`` is the type the bytes really have (sniffed, else declared, else
    guessed from the name), for the other paths it is decided later.
    """

    workspace_id: str
    via: UploadedVia
    source: str | None = None
    project_id: str | None = None
    folder: str | None = None
    content_type: str | None = None
    file_name: str | None = None
    data: bytes | None = None
    stored_type: str | None = None


def validate_asset_json(body: Any, config: EmulatorConfig) -> AssetRequest:
    """A checked JSON create (paths B and C).

    Raises:
        ApiProblem: 400 ``input_validation_error`` listing every problem, or 403
            ``forbidden`` for another workspace.
    """
    if not isinstance(body, dict):
        raise invalid([FieldError("body", f"Expected object, received {json_type(body)}")])
    errors = unknown_keys("", body, JSON_FIELDS)
    if "idempotency_key" in body:
        errors.append(FieldError("idempotency_key", "Send the Idempotency-Key header instead"))
    via, source_errors = _check_source(body.get("source", _MISSING), config)
    errors += source_errors
    errors += _check_fields(body)
    if errors:
        raise invalid(errors)
    _check_access(body["workspace_id"], config)
    assert via is not None
    return AssetRequest(
        workspace_id=body["workspace_id"],
        via=via,
        source=body["source"] if via == "url" else None,
        **{name: body.get(name) for name in _OPTIONAL},
    )


def validate_asset_form(
    items: list[tuple[str, str | FilePart]], config: EmulatorConfig
) -> AssetRequest:
    """A checked multipart create (path A: direct bytes).

    Raises:
        ApiProblem: 400 ``input_validation_error`` listing every problem, or 403
            ``forbidden`` for another workspace.
    """
    values: dict[str, str | FilePart] = {}
    errors: list[FieldError] = []
    for name, value in items:
        if name in values:
            errors.append(FieldError(name, "Must be sent once"))
        values[name] = value
    if "source" in values:
        message = "Not allowed with a file upload; send JSON to upload from a URL or signed-url"
        errors.append(FieldError("source", message))
    errors += unknown_keys("", {k: v for k, v in values.items() if k != "source"}, FORM_FIELDS)
    file = values.get("file")
    if file is None:
        errors.append(FieldError("file", "Required"))
    elif not isinstance(file, FilePart):
        errors.append(FieldError("file", "Expected a file part (with a filename)"))
    texts: dict[str, Any] = {}
    for name, value in values.items():
        if name == "file" or name not in FORM_FIELDS:
            continue
        if isinstance(value, FilePart):
            errors.append(FieldError(name, "Expected a text field, received a file"))
        else:
            texts[name] = value
    errors += _check_fields(texts)
    stored_type = None
    if isinstance(file, FilePart):
        stored_type, file_errors = _check_file(file, texts.get("content_type"), config)
        errors += file_errors
    if errors:
        raise invalid(errors)
    assert isinstance(file, FilePart)
    _check_access(texts["workspace_id"], config)
    declared = texts.get("content_type") or _declared_part_type(file)
    return AssetRequest(
        workspace_id=texts["workspace_id"],
        via="direct",
        project_id=texts.get("project_id"),
        folder=texts.get("folder"),
        content_type=declared,
        file_name=texts.get("file_name") or file.filename,
        data=file.data,
        stored_type=stored_type,
    )


def check_idempotency_key(header: str | None) -> str | None:
    """The ``Idempotency-Key`` header, checked; None when absent.

    Raises:
        ApiProblem: 400 ``input_validation_error`` for an empty or over-long key.
    """
    if header is None:
        return None
    if not header.strip():
        raise invalid([FieldError("Idempotency-Key", "Must not be empty")])
    if len(header) > MAX_KEY_LENGTH:
        message = f"Must be at most {MAX_KEY_LENGTH} characters"
        raise invalid([FieldError("Idempotency-Key", message)])
    return header


_MISSING = object()


def _check_source(
    value: Any, config: EmulatorConfig
) -> tuple[UploadedVia | None, list[FieldError]]:
    """Which path a JSON ``source`` asks for, or why it is refused."""
    if value is _MISSING:
        return None, [FieldError("source", "Required")]
    if not isinstance(value, str):
        hint = "; pass the URL itself as a string" if isinstance(value, dict) else ""
        return None, [FieldError("source", f"Expected string, received {json_type(value)}{hint}")]
    if value == SIGNED_URL:
        return "signed_url", []
    lowered = value.strip().lower()
    if lowered.startswith("http://"):
        return None, [FieldError("source", "Must be an https:// URL (http:// is refused)")]
    if lowered.startswith("data:"):
        return None, [FieldError("source", "data: URLs are not accepted; upload the bytes")]
    if not lowered.startswith("https://"):
        message = f'Expected "{SIGNED_URL}" or an https:// URL'
        return None, [FieldError("source", message)]
    reason = _fetch_refusal(value, config)
    return ("url", []) if reason is None else (None, [FieldError("source", reason)])


def _fetch_refusal(url: str, config: EmulatorConfig) -> str | None:
    """Why the server will not fetch ``url``; None if it will try."""
    try:
        host = (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:
        return "Is not a valid URL"
    if not host:
        return "Has no host"
    if uploads.private_host(host):
        return "Refused: private, loopback and metadata addresses cannot be fetched"
    if host_refused(host, config):
        return f"Could not fetch the source URL from host {host!r}"
    return None


def host_refused(host: str, config: EmulatorConfig) -> bool:
    """Whether the configured fetch lists refuse this (public) host."""
    if config.fetch_hosts is not None and not uploads.host_listed(host, config.fetch_hosts):
        return True
    return bool(config.refuse_fetch_hosts) and uploads.host_listed(host, config.refuse_fetch_hosts)


def _check_fields(values: dict[str, Any]) -> list[FieldError]:
    """``workspace_id`` and the optional text fields, shared by both body kinds."""
    errors: list[FieldError] = []
    workspace = values.get("workspace_id", _MISSING)
    if workspace is _MISSING:
        errors.append(FieldError("workspace_id", "Required"))
    else:
        errors += _check_id("workspace_id", workspace, "ws_")
    if "project_id" in values:
        errors += _check_id("project_id", values["project_id"], "prj_")
    for name in ("folder", "content_type", "file_name"):
        if name not in values:
            continue
        value = values[name]
        if not isinstance(value, str):
            errors.append(FieldError(name, f"Expected string, received {json_type(value)}"))
        elif not value.strip():
            errors.append(FieldError(name, "Must not be empty"))
        elif name == "content_type" and not uploads.accepted(value):
            errors.append(FieldError(name, _unsupported(value)))
    return errors


def _check_id(name: str, value: Any, prefix: str) -> list[FieldError]:
    if not isinstance(value, str):
        return [FieldError(name, f"Expected string, received {json_type(value)}")]
    if not re.fullmatch(rf"{prefix}\S+", value):
        return [FieldError(name, f"Must be a public id starting with '{prefix}'")]
    return []


def _check_access(workspace_id: str, config: EmulatorConfig) -> None:
    if workspace_id != config.workspace_id:
        raise ApiProblem("forbidden", "The API key has no access to this workspace.")


def _check_file(
    file: FilePart, declared: Any, config: EmulatorConfig
) -> tuple[str | None, list[FieldError]]:
    """The stored type of a direct upload, or the problems with its bytes."""
    limit = config.direct_upload_limit
    if not file.data:
        return None, [FieldError("file", "File is empty")]
    if len(file.data) > limit:
        message = (
            f"File is {len(file.data)} bytes, over the {limit}-byte direct upload limit; "
            f'use source "{SIGNED_URL}"'
        )
        return None, [FieldError("file", message)]
    stored = stored_type(file, declared if isinstance(declared, str) else None)
    if stored is None or not uploads.accepted(stored):
        return None, [FieldError("file", _unsupported(stored or uploads.OCTET_STREAM))]
    if stored.startswith("image/") and uploads.too_many_pixels(file.data):
        return None, [FieldError("file", "Image exceeds 150 megapixels")]
    return stored, []


def stored_type(file: FilePart, declared: str | None) -> str | None:
    """What the bytes are: sniffed, else declared, else the part's type, else the name's."""
    sniffed = uploads.sniff(file.data)
    if sniffed:
        return sniffed
    for candidate in (declared, _declared_part_type(file), uploads.guess_type(file.filename)):
        if candidate:
            return uploads.normalise(candidate)
    return None


def _declared_part_type(file: FilePart) -> str | None:
    """The part's own ``Content-Type``, unless it is the meaningless octet-stream default."""
    kind = file.content_type
    return kind if kind and uploads.normalise(kind) != uploads.OCTET_STREAM else None


def _unsupported(content_type: str) -> str:
    accepted = ", ".join(uploads.ACCEPTED_TYPES)
    return f"Unsupported content type '{content_type}' (accepted: {accepted})"

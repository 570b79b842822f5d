"""The assets routes (ASSETS.md), the fake storage they point at, and asset downloads.

API routes (authenticated, counted and faulted like every API route; ``request_counts``
uses these strings):

* ``POST /api/v1/assets``: JSON (``source`` = an https URL or ``"signed-url"``) or
  ``multipart/form-data`` (direct bytes); 201 (``create_status``), or 200 with
  ``idempotent-replayed: true`` when an ``Idempotency-Key`` replays;
* ``GET /api/v1/assets`` (newest first; ``limit``, ``cursor``, ``query``,
  ``workspace_id``, ``project_id``) and ``GET /api/v1/assets/{asset_id}``;
* ``POST /api/v1/assets/{asset_id}/complete`` and ``POST /api/v1/assets/{asset_id}/retry``.

Outside the API (no auth):

* ``POST /_storage/{token}``: the storage provider of a signed upload.  As ASSETS.md §3
  says: a ``multipart/form-data`` POST with every ``form_fields`` entry, in order, before
  the ``file`` part; 204 on success; S3/GCS-style XML errors otherwise (403 for an
  expired, superseded or completed reservation or a changed policy field, 400 for a
  file before the fields, a missing file or, with ``storage_rejects_auth``, an
  ``Authorization`` header; 500/503 for an injected ``storage_error``).  No PUT.
* ``GET /assets/{asset_id}/{name}``: an asset's bytes once ``ready``.  This is the path of
  the asset's public URL (``https://media.flora.ai/assets/{asset_id}/{name}``), so a
  client can fetch it from the emulator's origin, or mount the app for that host.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from xml.sax.saxutils import escape

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .asset_validation import (
    FilePart,
    check_idempotency_key,
    validate_asset_form,
    validate_asset_json,
)
from .assets import AssetRecord, AssetResult, iso
from .config import EmulatorConfig
from .faults import FaultKind, Roll
from .problems import ApiProblem, FieldError, invalid
from .render import millis
from .responses import (
    broken_json,
    decode_cursor,
    encode_cursor,
    json_response,
    parse_limit,
    problem_response,
)
from .state import EmulatorState
from .validation import parse_json

CREATE_ASSET = "POST /api/v1/assets"
LIST_ASSETS = "GET /api/v1/assets"
GET_ASSET = "GET /api/v1/assets/{asset_id}"
COMPLETE_ASSET = "POST /api/v1/assets/{asset_id}/complete"
RETRY_ASSET = "POST /api/v1/assets/{asset_id}/retry"
STORAGE = "POST /_storage/{token}"
ASSET_MEDIA = "GET /assets/{asset_id}/{name}"
ASSET_ROUTES = (
    CREATE_ASSET,
    LIST_ASSETS,
    GET_ASSET,
    COMPLETE_ASSET,
    RETRY_ASSET,
    STORAGE,
    ASSET_MEDIA,
)
STORAGE_PREFIX = "/_storage"
FILE_FIELD = "file"

Handler = Callable[[Request, Roll], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]
EndpointFactory = Callable[[str, str, Handler], Endpoint]


class AssetWire:
    """Renders asset objects for one config and request base URL (snake_case only)."""

    def __init__(self, config: EmulatorConfig, base_url: str) -> None:
        self.config = config
        self.origin = base_url.rstrip("/")

    def storage_url(self, record: AssetRecord) -> str:
        """Where the bytes of a signed upload go: the emulator's own fake storage."""
        return f"{self.origin}{STORAGE_PREFIX}/{record.upload_token}"

    def created(self, record: AssetRecord, now: float) -> dict[str, Any]:
        """The create answer (the spec's 201 object)."""
        body: dict[str, Any] = {
            "asset_id": record.asset_id,
            "uploaded_via": record.uploaded_via,
            "url": record.url,
            "workspace_id": record.workspace_id,
            "visibility": "workspace",
            "status": record.status_at(now),
        }
        return {**body, **self.instructions(record, now)}

    def action(self, record: AssetRecord, now: float, *, upload: bool) -> dict[str, Any]:
        """The complete/retry answer: asset state, failure message, perhaps a new upload."""
        body: dict[str, Any] = {
            "asset_id": record.asset_id,
            "url": record.url,
            "workspace_id": record.workspace_id,
            "visibility": "workspace",
            "status": record.status_at(now),
            "failure_message": record.failure_message_at(now),
        }
        return {**body, **self.instructions(record, now)} if upload else body

    def instructions(self, record: AssetRecord, now: float) -> dict[str, Any]:
        """``upload`` / ``upload_url`` / ``expires_at`` while a reservation is open."""
        if record.uploaded_via != "signed_url" or not record.reservation_open(now):
            return {}
        assert record.expires_at is not None
        url, fields = self.storage_url(record), dict(record.upload_fields)
        shape = self.config.upload_shape
        body: dict[str, Any]
        if shape == "snake":
            body = {
                "upload": {
                    "url": url,
                    "method": "POST",
                    "content_type": "multipart/form-data",
                    "file_field": FILE_FIELD,
                    "form_fields": fields,
                }
            }
        elif shape == "camel":
            body = {"upload": {"url": url, "fileField": FILE_FIELD, "formFields": fields}}
        elif shape == "serialized":
            body = {"upload_url": json.dumps({"url": url, "fields": fields})}
        else:
            body = {"upload_url": url}
        return {**body, "expires_at": iso(record.expires_at + self.config.clock_skew)}

    @staticmethod
    def _common(record: AssetRecord, now: float) -> dict[str, Any]:
        ready = record.status_at(now) == "ready"
        return {
            "asset_id": record.asset_id,
            "name": record.file_name,
            "description": None,
            "workspace_id": record.workspace_id,
            "url": record.url,
            "content_type": record.content_type,
            "upload_content_type": record.upload_content_type,
            "size_bytes": record.size if ready else None,
            "uploaded_via": record.uploaded_via,
            "status": record.status_at(now),
            "width": record.width if ready else None,
            "height": record.height if ready else None,
        }

    def asset(self, record: AssetRecord, now: float) -> dict[str, Any]:
        """``GET /assets/{id}``: ISO ``created_at`` and ``failure_message``."""
        body = self._common(record, now)
        body["created_at"] = iso(record.created_at + self.config.clock_skew)
        body["failure_message"] = record.failure_message_at(now)
        return body

    def item(self, record: AssetRecord, now: float) -> dict[str, Any]:
        """A list item: integer ``created_at`` (unix ms), ``node_id`` and ``project_id``."""
        body = self._common(record, now)
        body["created_at"] = millis(record.created_at + self.config.clock_skew)
        body["node_id"] = None
        body["project_id"] = record.project_id
        return body


class AssetApi:
    """The asset route handlers, bound to one emulator's state."""

    def __init__(self, state: EmulatorState, endpoint: EndpointFactory) -> None:
        self.state = state
        self.store = state.asset_store
        self.config = state.config
        self.endpoint = endpoint

    def routes(self) -> list[Route]:
        """Starlette routes; the API ones wrapped by the app's endpoint factory."""
        e = self.endpoint
        return [
            Route("/api/v1/assets", e(LIST_ASSETS, "read", self.list_assets), methods=["GET"]),
            Route("/api/v1/assets", e(CREATE_ASSET, "asset_create", self.create), methods=["POST"]),
            Route("/api/v1/assets/{asset_id}", e(GET_ASSET, "read", self.get), methods=["GET"]),
            Route(
                "/api/v1/assets/{asset_id}/complete",
                e(COMPLETE_ASSET, "asset_action", self.complete),
                methods=["POST"],
            ),
            Route(
                "/api/v1/assets/{asset_id}/retry",
                e(RETRY_ASSET, "asset_action", self.retry),
                methods=["POST"],
            ),
            Route(f"{STORAGE_PREFIX}/{{token}}", self.storage, methods=["POST"]),
            Route("/assets/{asset_id}/{name}", self.media, methods=["GET"]),
        ]

    def _wire(self, request: Request) -> AssetWire:
        return AssetWire(self.config, str(request.base_url))

    @staticmethod
    def _answer(body: dict[str, Any], result: AssetResult, status: int) -> Response:
        if result.replayed:
            return json_response(body, 200, {"idempotent-replayed": "true"})
        return json_response(body, status)

    # -- the API ------------------------------------------------------------------------

    async def create(self, request: Request, roll: Roll) -> Response:
        """``POST /assets``: validate either body, maybe fault, make the asset once."""
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith("multipart/form-data"):
            asset_request = validate_asset_form(await _read_form(request), self.config)
        else:
            asset_request = validate_asset_json(parse_json(await request.body()), self.config)
        key = check_idempotency_key(request.headers.get("idempotency-key"))
        if roll.fault is FaultKind.ERROR_BEFORE_ASSET_CREATE:
            raise ApiProblem("unknown_error")
        result = self.store.create(asset_request, key)
        if roll.fault is FaultKind.ERROR_AFTER_ASSET_CREATE:
            raise ApiProblem("unknown_error")
        body = self._wire(request).created(result.record, self.store.now())
        status = 200 if result.replayed else self.config.create_status
        if roll.fault is FaultKind.DROP_AFTER_ASSET_CREATE:
            return broken_json(body, status)
        return self._answer(body, result, status)

    async def get(self, request: Request, roll: Roll) -> Response:
        """``GET /assets/{asset_id}``."""
        record = self.store.get(request.path_params["asset_id"])
        return json_response(self._wire(request).asset(record, self.store.now()))

    async def list_assets(self, request: Request, roll: Roll) -> Response:
        """``GET /assets``: newest first, filtered, paged by a sequence-number cursor."""
        query = request.query_params
        limit = parse_limit(query.get("limit"))
        before = decode_cursor(query.get("cursor"), "before")
        workspace_id, project_id = query.get("workspace_id"), query.get("project_id")
        errors = [
            FieldError(name, f"Must be a public id starting with '{prefix}'")
            for name, value, prefix in (
                ("workspace_id", workspace_id, "ws_"),
                ("project_id", project_id, "prj_"),
            )
            if value and not re.fullmatch(rf"{prefix}\S+", value)
        ]
        if errors:
            raise invalid(errors)
        found = self.store.listing(workspace_id, project_id, query.get("query"), before)
        page, now, wire = found[:limit], self.store.now(), self._wire(request)
        more = len(found) > limit
        meta = {
            "next_cursor": encode_cursor({"before": page[-1].seq}) if more else None,
            "total_estimate": len(found),
        }
        return json_response({"assets": [wire.item(r, now) for r in page], "meta": meta})

    async def complete(self, request: Request, roll: Roll) -> Response:
        """``POST /assets/{asset_id}/complete`` (no body)."""
        key = check_idempotency_key(request.headers.get("idempotency-key"))
        result = self.store.complete(request.path_params["asset_id"], key)
        body = self._wire(request).action(result.record, self.store.now(), upload=False)
        return self._answer(body, result, 200)

    async def retry(self, request: Request, roll: Roll) -> Response:
        """``POST /assets/{asset_id}/retry`` (no body): a fresh upload reservation."""
        key = check_idempotency_key(request.headers.get("idempotency-key"))
        result = self.store.retry(request.path_params["asset_id"], key)
        body = self._wire(request).action(result.record, self.store.now(), upload=True)
        return self._answer(body, result, 200)

    # -- outside the API ------------------------------------------------------------------

    async def storage(self, request: Request) -> Response:
        """``POST /_storage/{token}``: the signed upload's transfer (ASSETS.md §3)."""
        roll = self.state.dice.roll(STORAGE, self.state.count(STORAGE), "storage")
        if roll.delay:
            await asyncio.sleep(roll.delay)
        record = self.store.by_token(request.path_params["token"])
        if record is None:
            return storage_error(403, "AccessDenied", "Invalid or superseded upload token.")
        if self.config.storage_rejects_auth and "authorization" in request.headers:
            message = (
                "Only one auth mechanism allowed: the policy fields sign this upload; "
                "do not send an Authorization header."
            )
            return storage_error(400, "InvalidArgument", message)
        now = self.store.now()
        if record.completed_at is not None:
            return storage_error(403, "AccessDenied", "This upload is already complete.")
        if not record.reservation_open(now):
            expired = "Invalid according to Policy: Policy expired."
            return storage_error(403, "AccessDenied", expired)
        try:
            items = await _form_items(request)
        except HTTPException as exc:
            return storage_error(400, "MalformedPOSTRequest", str(exc.detail))
        file, refusal = _policy_check(items, record.upload_fields)
        if refusal is not None:
            return refusal
        assert file is not None
        if roll.fault is FaultKind.STORAGE_ERROR:
            if roll.variant < 0.5:
                return storage_error(500, "InternalError", "We encountered an internal error.")
            return storage_error(503, "SlowDown", "Please reduce your request rate.")
        self.store.accept_upload(record, file)
        return Response(status_code=204)

    async def media(self, request: Request) -> Response:
        """``GET /assets/{asset_id}/{name}``: a ready asset's bytes (no auth)."""
        roll = self.state.dice.roll(ASSET_MEDIA, self.state.count(ASSET_MEDIA), "asset_media")
        if roll.delay:
            await asyncio.sleep(roll.delay)
        record = self.store.records.get(request.path_params["asset_id"])
        now = self.store.now()
        if (
            record is None
            or record.data is None
            or record.file_name != request.path_params["name"]
            or record.status_at(now) != "ready"
        ):
            return problem_response(ApiProblem("not_found", "Media not found."))
        return Response(record.data, media_type=record.content_type)


def storage_error(status: int, code: str, message: str) -> Response:
    """An S3/GCS-style XML error, as a storage provider answers."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    )
    return Response(body, status_code=status, media_type="application/xml")


async def _form_items(request: Request) -> list[tuple[str, str | FilePart]]:
    """Every part of a multipart body, in order, files read into memory.

    Raises:
        HTTPException: 400 for a body the multipart parser cannot read.
    """
    items: list[tuple[str, str | FilePart]] = []
    async with request.form(max_files=10, max_fields=100) as form:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                items.append((name, FilePart(data, value.filename, value.content_type)))
            else:
                items.append((name, value))
    return items


async def _read_form(request: Request) -> list[tuple[str, str | FilePart]]:
    """``_form_items`` for the API: a malformed body is a 400 ``input_validation_error``."""
    try:
        return await _form_items(request)
    except HTTPException as exc:
        raise invalid([FieldError("body", f"Malformed multipart body: {exc.detail}")]) from None


def _policy_check(
    items: list[tuple[str, str | FilePart]], fields: dict[str, str]
) -> tuple[FilePart | None, Response | None]:
    """The file of a storage transfer, or the storage's refusal of the form."""
    parts = [(n, value) for n, (name, value) in enumerate(items) if name == FILE_FIELD]
    index, file = parts[0] if len(parts) == 1 else (0, None)
    if not isinstance(file, FilePart):
        message = f"POST requires exactly one file upload per request, in the field {FILE_FIELD!r}."
        return None, storage_error(400, "InvalidArgument", message)
    before = {name: value for name, value in items[:index] if isinstance(value, str)}
    after = {name for name, _ in items[index + 1 :]}
    for name, expected in fields.items():
        if name not in before and name in after:
            message = f"Form field {name!r} came after the file; policy fields must precede it."
            return None, storage_error(400, "InvalidArgument", message)
        if name not in before:
            message = f"Invalid according to Policy: missing form field {name!r}."
            return None, storage_error(403, "AccessDenied", message)
        if before[name] != expected:
            message = f"Invalid according to Policy: form field {name!r} does not match."
            return None, storage_error(403, "AccessDenied", message)
    return file, None

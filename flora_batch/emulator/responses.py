"""HTTP plumbing: JSON and error responses, broken responses, request ids, cursors.

A *broken* response is how the emulator drops a connection on purpose: it sends the
status line and a ``Content-Length`` for the full body, sends half the body, and then
raises ``ConnectionDropped``.  Under uvicorn the server then closes the socket, so an
httpx client sees ``httpx.RemoteProtocolError`` ("peer closed connection without sending
complete message body").  Through ``httpx.ASGITransport`` the raised exception reaches
the client directly, and because ``ConnectionDropped`` *is* an ``httpx.RemoteProtocolError``
the client sees the same exception class either way.  (With
``ASGITransport(raise_app_exceptions=False)`` the client instead gets the half body.)
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

import httpx
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import ApiProblem, FieldError, invalid

BAD_GATEWAY_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
)


class ConnectionDropped(httpx.RemoteProtocolError):
    """Raised by the emulator to cut a response short, as a dying server or proxy would."""


def json_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON answer."""
    return JSONResponse(body, status_code=status, headers=headers)


def problem_response(problem: ApiProblem) -> JSONResponse:
    """The error envelope with the status of its code and any extra headers."""
    return JSONResponse(problem.body(), status_code=problem.status, headers=problem.headers)


def bad_gateway_response() -> HTMLResponse:
    """A non-JSON 502, as a load balancer in front of FLORA sends (CONTRACT.md §12.19)."""
    return HTMLResponse(BAD_GATEWAY_PAGE, status_code=502)


class BrokenResponse(Response):
    """Full ``Content-Length``, half the body, then the connection goes away."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        raise ConnectionDropped(
            f"emulator dropped the connection after {len(half)} of {len(self.body)} bytes"
        )


def broken_json(body: dict[str, Any], status: int) -> BrokenResponse:
    """A JSON answer that never fully arrives."""
    data = json.dumps(body, separators=(",", ":")).encode()
    return BrokenResponse(data, status_code=status, media_type="application/json")


def new_request_id() -> str:
    """A fresh ``req_…`` id for the ``request-id`` header."""
    return f"req_{secrets.token_hex(12)}"


class RequestIdMiddleware:
    """Stamps a ``request-id`` header on every response, errors and media included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id().encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"request-id"]
                message = {**message, "headers": [*headers, (b"request-id", request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def encode_cursor(data: dict[str, int]) -> str:
    """An opaque cursor, shaped like the spec's example (base64 of ``{"offset":20}``)."""
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, key: str) -> int | None:
    """The number stored under ``key`` in a cursor; None without a cursor.

    Raises:
        ApiProblem: 400 ``input_validation_error`` for a cursor this server did not make.
    """
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)[key]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise invalid([FieldError("cursor", "Invalid cursor")]) from None
    if not isinstance(value, int) or value < 0:
        raise invalid([FieldError("cursor", "Invalid cursor")])
    return value


def parse_limit(raw: str | None, default: int = 20, maximum: int = 100) -> int:
    """The ``limit`` query parameter: an integer in 1..maximum.

    Raises:
        ApiProblem: 400 ``input_validation_error`` for anything else.
    """
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid([FieldError("limit", "Expected number, received string")]) from None
    if not 1 <= value <= maximum:
        raise invalid([FieldError("limit", f"Number must be between 1 and {maximum}")])
    return value

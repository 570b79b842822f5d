"""FloraClient: the one door to FLORA over HTTP.

One connection pool does everything: technique look-ups, creates, polls, the run history,
asset uploads and output downloads.  Every request is built here the same way and sent by
the client's lane (``lanes.py``): aiohttp's by default, httpx's over any httpx transport
(tests: the emulator in-process), so tests travel the production path down to that seam.
Both lanes raise httpx's exceptions, translated into the ``errors`` tree here and nowhere
else (``map_http_errors``), so callers branch on meaning ("ambiguous create", "rate
limited") rather than on transport details.  The client writes no files: a download
streams into a ``Sink`` the results folder made.

This module retries nothing by itself: what may be repeated, and how, is decided by
``retrying`` and the worker, because a create is not a poll.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from .. import asset_wire, wire
from ..asset_wire import AssetInfo, UploadTarget
from ..errors import (
    AmbiguousCreate,
    ApiError,
    ConfigError,
    ProtocolError,
    RateLimited,
    RemoteError,
    ResponseRefused,
    StorageError,
    TransportError,
    api_error_class,
)
from ..types import RunInfo, RunInput, Technique
from .lanes import AiohttpLane, HttpxLane, Lane, Reply
from .sniff import HEAD_BYTES, content_type_of, media_problem
from .url_policy import check_fetch_url, is_loopback

if TYPE_CHECKING:
    from .transport import AiohttpTransport

MAX_JSON_BYTES = 8 * 1024 * 1024
#: ``FLORA_BATCH_HTTP=httpx`` falls back to httpx's own transport (httpcore) instead of
#: ``transport.AiohttpTransport``.  Read here, below the CLI, like the retry test switch:
#: it picks an implementation, not a behaviour, and must reach every FloraClient.
HTTP_STACK_ENV = "FLORA_BATCH_HTTP"
HTTP_STACKS = ("aiohttp", "httpx")
DEFAULT_MAX_DOWNLOAD = 2 * 1024 * 1024 * 1024
USER_AGENT = f"flora-batch/{wire.package_version()}"


class Sink(Protocol):
    """Where a download's bytes go: the results folder makes it (``results.local.FileSink``),
    and owns the file; the client only streams bytes into it, checked and hashed."""

    def write_all(self, data: bytes, *, fsync: bool) -> None:
        """Write a whole (small) body at once; with ``fsync``, durably."""

    def write(self, chunk: bytes) -> None:
        """Write the next piece of a streamed body."""

    def finish(self, *, fsync: bool) -> None:
        """The streamed body is complete: flush it (with ``fsync``, durably) and close."""

    def abandon(self) -> None:
        """The body will not be kept: close without flushing (the caller discards it)."""


@dataclass(frozen=True, slots=True)
class RunHistory:
    """Runs of the history, newest first, and whether they reach as far back as asked."""

    runs: list[RunInfo]
    complete: bool


@dataclass(frozen=True, slots=True)
class Downloaded:
    """What a finished download wrote."""

    size: int
    sha256: str
    content_type: str | None


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``retry-after`` (seconds or HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


@contextmanager
def map_http_errors(*, creating: bool = False) -> Iterator[None]:
    """Translate httpx exceptions; a create that may have left becomes AmbiguousCreate."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        # The request never reached the server: safe for every kind of request.
        raise TransportError(f"could not connect to FLORA: {exc!r}") from exc
    except httpx.TransportError as exc:
        message = f"connection to FLORA failed mid-request: {type(exc).__name__}"
        if creating:
            timed_out = isinstance(exc, httpx.TimeoutException)
            raise AmbiguousCreate(message, timed_out=timed_out) from exc
        raise TransportError(message) from exc


def http_stack(stack: str | None = None) -> str:
    """``"aiohttp"`` or ``"httpx"``: ``stack``, else ``FLORA_BATCH_HTTP``, else aiohttp.

    The CLI calls it first thing, so a bad value stops before any ledger is touched.

    Raises:
        ConfigError: an unknown stack name.
    """
    stack = (stack or os.environ.get(HTTP_STACK_ENV) or "aiohttp").strip().lower()
    if stack not in HTTP_STACKS:
        raise ConfigError(f"{HTTP_STACK_ENV}={stack!r}: expected one of {', '.join(HTTP_STACKS)}")
    return stack


def default_lane(max_connections: int, stack: str | None = None) -> Lane:
    """The lane FloraClient uses when given no transport.

    aiohttp's (``transport.py``) costs a fifth of httpx's CPU per request
    (docs/performance.md, scenario 1); ``FLORA_BATCH_HTTP=httpx`` is the way back.  With
    a proxy in the environment (``HTTPS_PROXY`` ...) it is httpx's own too: httpx honours
    those (and ``NO_PROXY``) only for the transport it builds itself.

    Args:
        max_connections: the pool's size.
        stack: ``"aiohttp"`` or ``"httpx"``; None reads ``FLORA_BATCH_HTTP``.

    Raises:
        ConfigError: an unknown stack name.
    """
    if http_stack(stack) == "httpx" or _proxied():
        return HttpxLane.over(None, max_connections=max_connections)
    from .transport import AiohttpTransport  # aiohttp is imported only when it is used

    return AiohttpLane(AiohttpTransport(max_connections=max_connections))


def lane_for(transport: httpx.AsyncBaseTransport | None, max_connections: int) -> Lane:
    """The lane over ``transport``: the aiohttp lane for ours, the httpx lane for any
    other (the emulator in-process: tests), the default for None."""
    if transport is None:
        return default_lane(max_connections)
    if _is_aiohttp(transport):
        return AiohttpLane(cast("AiohttpTransport", transport))
    return HttpxLane.over(transport, max_connections=max_connections)


def _is_aiohttp(transport: httpx.AsyncBaseTransport) -> bool:
    """Whether ``transport`` is ours (only then is aiohttp imported)."""
    from .transport import AiohttpTransport

    return isinstance(transport, AiohttpTransport)


def _proxied() -> bool:
    """Whether the environment names an HTTP(S) proxy (as httpx reads it)."""
    return any(k in ("http", "https", "all") for k in urllib.request.getproxies_environment())


def _error_from(response: Reply, body: bytes) -> ApiError:
    """The ApiError for a non-2xx response, envelope or not."""
    request_id = response.headers.get("request-id")
    try:
        code, message, fields = wire.parse_error(json.loads(body))
    except ValueError:
        code, message, fields = "", "", []
    cls = api_error_class(response.status_code, code)
    message = message or f"HTTP {response.status_code} from FLORA"
    if cls is RateLimited:
        return RateLimited(
            message,
            status=response.status_code,
            code=code,
            fields=fields,
            request_id=request_id,
            retry_after=parse_retry_after(response.headers),
        )
    return cls(
        message, status=response.status_code, code=code, fields=fields, request_id=request_id
    )


class FloraClient:
    """Talks to FLORA (or the emulator).  Use as ``async with FloraClient(...) as c:``.

    Args:
        base_url: e.g. ``https://app.flora.ai/api/v1``.
        api_key: sent as a bearer token; never logged or stored.
        transport: an httpx transport to use instead of the network (tests: the emulator).
            None: ``default_transport`` (aiohttp's, unless ``FLORA_BATCH_HTTP=httpx``).
        timeout: seconds for connect and read.
        max_connections: connection pool size.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 60.0,
        max_connections: int = 32,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._base = urlsplit(self.base_url)
        # Sent only to the API, never to media hosts that serve outputs.
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._lane = lane_for(transport, max_connections)
        self._timeout = timeout
        self._plain = {"User-Agent": USER_AGENT}  # what is sent to media hosts
        self._api = {**self._plain, **self._auth}
        # At most as many requests inside httpx as its pool has connections; the rest
        # wait here, in O(1).  Queued inside httpcore instead, each arrival or finish
        # rescans every queued request against every connection: 10,000 polls due at
        # once took minutes (docs/performance.md, scenarios 1 and 4).
        self._gate = asyncio.Semaphore(max_connections)

    async def __aenter__(self) -> FloraClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._lane.aclose()

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Send one request through the lane; the caller holds the gate and ``aclose``s
        the reply.  ``headers`` are all that is sent (User-Agent included); ``timeout``
        replaces the client's for this request."""
        return await self._lane.request(
            method, url, headers=headers, content=content, timeout=timeout or self._timeout
        )

    async def _send_built(self, request: httpx.Request) -> Reply:
        """Send a request httpx built (a multipart body) through the lane."""
        return await self._lane.send(request, self._timeout)

    # -- JSON requests ------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        creating: bool = False,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **multipart: Any,
    ) -> tuple[Any, str | None, int]:
        """Send one request; return ``(json, request_id, status)`` or raise a FloraError.

        Args:
            json_body: sent as compact UTF-8 JSON (as httpx's ``json=`` would).
            params: the query string.
            timeout: seconds for this request instead of the client's.
            multipart: httpx's ``data``/``files`` for a multipart body.
        """
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        if params:
            url = f"{url}?{urlencode(params)}"
        sent = {**self._api, **headers} if headers else self._api
        content = None
        if json_body is not None:
            content = json.dumps(
                json_body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
            sent = {**sent, "Content-Type": "application/json"}
        async with self._gate:
            with map_http_errors(creating=creating):
                if multipart:  # httpx builds the body; the lane sends it like any other
                    built = httpx.Request(method, url, headers=sent, **multipart)
                    response = await self._send_built(built)
                else:
                    response = await self._send(method, url, sent, content, timeout)
                try:
                    body = await self._read_capped(response)
                finally:
                    await response.aclose()
        request_id = response.headers.get("request-id")
        if not response.is_success:
            raise _error_from(response, body)
        try:
            return json.loads(body), request_id, response.status_code
        except ValueError as exc:
            cls = AmbiguousCreate if creating else ProtocolError
            raise cls("FLORA answered with malformed JSON", request_id=request_id) from exc

    @staticmethod
    async def _read_capped(response: Reply) -> bytes:
        """The body, refused past MAX_JSON_BYTES; read at once when its length says it fits."""
        length = _declared(response.headers)
        if length is not None and length <= MAX_JSON_BYTES:
            return await response.aread()
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > MAX_JSON_BYTES:
                raise ProtocolError(
                    f"FLORA's response is larger than {MAX_JSON_BYTES} bytes",
                    request_id=response.headers.get("request-id"),
                )
            chunks.append(chunk)
        return b"".join(chunks)

    # -- techniques ---------------------------------------------------------------

    async def get_technique(self, slug: str) -> Technique:
        """``GET /techniques/{slug}``: inputs, outputs and cost.  Free."""
        data, _, _ = await self._request("GET", f"/techniques/{slug}")
        if isinstance(data, dict) and isinstance(data.get("technique"), dict):
            data = data["technique"]
        return wire.parse_technique(data, slug)

    async def list_techniques(self, *, limit: int = 100) -> list[Technique]:
        """Every technique, following ``meta.next_cursor``."""
        items: list[Technique] = []
        async for page, _ in self._pages("/techniques", "techniques", {"limit": limit}):
            items.extend(wire.parse_technique(t) for t in page)
        return items

    async def _pages(
        self, path: str, field: str, params: dict[str, Any], max_pages: int = 1000
    ) -> AsyncIterator[tuple[list[Any], bool]]:
        """Each page's items, and whether the listing ends with it (no ``next_cursor``),
        following ``meta.next_cursor`` for at most ``max_pages`` pages."""
        cursor: str | None = None
        for _ in range(max_pages):
            query = dict(params, **({"cursor": cursor} if cursor else {}))
            data, _, _ = await self._request("GET", path, params=query)
            items = data.get(field) if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise ProtocolError(f"{path} answered without a {field!r} list")
            meta = data.get("meta") if isinstance(data, dict) else None
            cursor = meta.get("next_cursor") if isinstance(meta, dict) else None
            last = not items or not cursor
            yield items, last
            if last:
                return

    # -- runs -----------------------------------------------------------------------

    async def create_run(self, slug: str, inputs: tuple[RunInput, ...], key: str) -> RunInfo:
        """``POST /techniques/{slug}/runs`` with the idempotency key in body and header.

        Raises AmbiguousCreate when the request may have reached FLORA but no answer
        came back; the caller may repeat it only with the same key.
        """
        data, request_id, _ = await self._request(
            "POST",
            f"/techniques/{slug}/runs",
            creating=True,
            json_body=wire.create_body(inputs, key),
            headers={"Idempotency-Key": key},
        )
        return wire.parse_run(data, request_id)

    async def get_run(
        self, slug: str, run_id: str, poll_url: str | None = None, *, timeout: float | None = None
    ) -> RunInfo:
        """Poll a run: its ``poll_url`` when it points at our base URL, else the nested route.

        ``timeout``: seconds for this request instead of the client's (the worker's polls
        use a shorter one: a poll that hangs must give its slot back).
        """
        path = f"/techniques/{slug}/runs/{run_id}"
        if poll_url and self._same_origin(poll_url):
            path = poll_url
        data, request_id, _ = await self._request("GET", path, timeout=timeout)
        return wire.parse_run(data, request_id)

    def _same_origin(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc) == (self._base.scheme, self._base.netloc)

    async def technique_runs(
        self, technique_id: str, *, newer_than: float | None = None, max_pages: int = 200
    ) -> RunHistory:
        """The run history for one technique, newest first, down to ``newer_than`` (ms).

        Pages are followed (``meta.next_cursor``, whatever size FLORA makes them) until a
        run older than ``newer_than`` shows up or the history ends: then the answer is
        ``complete``.  A history cut short by ``max_pages`` is not: what it lacks is
        unknown, and reconciliation must not read it as "no such run".
        """
        runs: list[RunInfo] = []
        params = {"technique_id": technique_id, "limit": 100}
        ended = False
        async for page, last in self._pages("/technique-runs", "technique_runs", params, max_pages):
            batch = [wire.parse_run(item) for item in page]
            runs.extend(batch)
            ended = last
            if newer_than is not None and batch and (batch[-1].created_at or 0) < newer_than:
                return RunHistory(runs, complete=True)
        return RunHistory(runs, complete=ended)

    # -- assets (ASSETS.md) ------------------------------------------------------------

    async def create_asset(self, body: dict[str, str], key: str) -> AssetInfo:
        """``POST /assets`` with a JSON body (a source URL, or ``"signed-url"``).

        The key goes in the ``Idempotency-Key`` header (the body takes no extra field).
        Raises AmbiguousCreate when the asset may exist but no answer came back.
        """
        data, request_id, _ = await self._request(
            "POST", "/assets", creating=True, json_body=body, headers={"Idempotency-Key": key}
        )
        return asset_wire.parse_asset(data, request_id)

    async def upload_asset(
        self, fields: dict[str, str], data: bytes, content_type: str | None, key: str
    ) -> AssetInfo:
        """``POST /assets`` as multipart: the text ``fields`` first, then the bytes (path A)."""
        file = (fields.get("file_name") or "file", data, content_type or "application/octet-stream")
        body, request_id, _ = await self._request(
            "POST",
            "/assets",
            creating=True,
            data=fields,
            files={"file": file},
            headers={"Idempotency-Key": key},
        )
        return asset_wire.parse_asset(body, request_id)

    async def get_asset(self, asset_id: str) -> AssetInfo:
        """``GET /assets/{asset_id}``."""
        data, request_id, _ = await self._request("GET", f"/assets/{asset_id}")
        return asset_wire.parse_asset(data, request_id)

    async def list_assets(
        self, workspace_id: str, *, query: str | None = None, max_pages: int = 5
    ) -> list[AssetInfo]:
        """``GET /assets``, newest first, following ``meta.next_cursor`` for a few pages."""
        params: dict[str, Any] = {"workspace_id": workspace_id, "limit": 100}
        if query:
            params["query"] = query
        found: list[AssetInfo] = []
        async for page, _ in self._pages("/assets", "assets", params, max_pages):
            found.extend(asset_wire.parse_asset_list({"assets": page})[0])
        return found

    async def complete_asset(self, asset_id: str, key: str | None = None) -> AssetInfo:
        """``POST /assets/{asset_id}/complete``: the signed upload's bytes are in place."""
        headers = {"Idempotency-Key": key} if key else {}
        data, request_id, _ = await self._request(
            "POST", f"/assets/{asset_id}/complete", headers=headers
        )
        return asset_wire.parse_asset(data, request_id)

    async def retry_asset(self, asset_id: str) -> AssetInfo:
        """``POST /assets/{asset_id}/retry``: a fresh signed-upload reservation, same asset."""
        data, request_id, _ = await self._request("POST", f"/assets/{asset_id}/retry")
        return asset_wire.parse_asset(data, request_id)

    async def send_to_storage(
        self, target: UploadTarget, path: Path, file_name: str, content_type: str | None
    ) -> None:
        """The signed upload's transfer: a multipart POST to the storage host (ASSETS.md §3).

        The policy fields go first, in order, then the file; no FLORA ``Authorization``
        header is sent (the signature is in the fields).  Raises StorageError on a non-2xx
        answer, with its status and the start of its body.
        """
        check_fetch_url(target.url)
        kind = content_type or "application/octet-stream"
        with open(path, "rb") as fh, map_http_errors():
            request = httpx.Request(
                target.method,
                target.url,
                headers=self._plain,
                data=dict(target.fields),
                files={target.file_field: (file_name, fh, kind)},
            )
            async with self._gate:
                resp = await self._send_built(request)
                try:
                    body = await self._read_capped(resp)
                finally:
                    await resp.aclose()
        if not resp.is_success:
            text = body.decode("utf-8", errors="replace")[:500]
            raise StorageError(
                f"the storage host answered {resp.status_code}: {text}", status=resp.status_code
            )

    # -- downloads ----------------------------------------------------------------

    async def download(
        self,
        url: str,
        sink: Sink,
        *,
        max_bytes: int = DEFAULT_MAX_DOWNLOAD,
        output_type: str | None = None,
        fsync: bool = False,
    ) -> Downloaded:
        """Stream ``url`` into ``sink`` (a temporary file the results folder made),
        hashing as it goes.

        Follows up to 5 redirects, each to HTTPS (or loopback) only.  Checks the byte
        count against Content-Length: a short body raises TransportError, never passes.
        A body over ``max_bytes`` (declared or streamed) raises ResponseRefused.  The sink
        is finished (closed) when this returns, abandoned when it raises.

        Args:
            output_type: for a run output, its type: the body must be that kind of file
                (``sniff.media_problem``), and unless the API itself is on loopback the
                URL and every redirect must name a public host.
            fsync: make the sink's bytes durable before returning.
        """
        local_ok = output_type is None or is_loopback(self._base.hostname)
        previous: str | None = None
        for _ in range(6):
            check_fetch_url(url, local_ok=local_ok, previous=previous)
            async with self._gate:
                with map_http_errors():
                    resp = await self._send("GET", url, self._plain)
                    try:
                        if resp.is_redirect:
                            previous, url = url, urljoin(url, resp.headers["location"])
                            continue
                        if not resp.is_success:
                            raise _error_from(resp, await self._read_capped(resp))
                        return await _stream_to(resp, sink, max_bytes, output_type, fsync)
                    finally:
                        await resp.aclose()
        raise ResponseRefused("too many redirects while downloading an output")


async def _stream_to(
    resp: Reply, sink: Sink, max_bytes: int, output_type: str | None, fsync: bool
) -> Downloaded:
    """The body of ``resp`` into ``sink``: capped, checked against its length and its
    promised kind, hashed; the sink finished, or abandoned on any failure."""
    declared = _declared(resp.headers)
    ctype = resp.headers.get("content-type")
    if declared is not None and declared > max_bytes:
        raise ResponseRefused(f"output is {declared:,} bytes, over the {max_bytes:,}-byte cap")
    _check_media(output_type, ctype, None)
    if declared is not None and declared <= SMALL_BODY:
        return _write_whole(await resp.aread(), sink, declared, output_type, ctype, fsync)
    expected = resp.headers.get("content-length")
    digest = hashlib.sha256()
    size, head = 0, b""
    try:
        # Chunks as the transport delivers them, not re-cut to 64 KB: aiohttp's come up
        # to READ_BUFSIZE (transport.py), so each costs one hash update and one write.
        # Hashing and writing stay on the loop: handing them to a thread measured slower
        # on 2 cores (GIL hand-offs between loop and thread).  Decoded bytes when
        # Content-Encoding is set, so the cap counts what is kept.
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise ResponseRefused(f"output is larger than the {max_bytes:,}-byte cap")
            if len(head) < HEAD_BYTES:
                head += chunk[: HEAD_BYTES - len(head)]
            digest.update(chunk)
            sink.write(chunk)
        if declared is not None and declared != size:
            raise TransportError(f"download truncated: got {size} of {expected} bytes")
        _check_media(output_type, ctype, head)
    except BaseException:
        sink.abandon()
        raise
    sink.finish(fsync=fsync)
    return Downloaded(size, digest.hexdigest(), content_type_of(ctype, head))


#: A body of at most this many bytes (declared by Content-Length) is read whole, then
#: written with one call: a stream costs an async generator and a loop turn per chunk.
SMALL_BODY = 1 << 20


def _declared(headers: Mapping[str, str]) -> int | None:
    """The body's length as Content-Length declares it, if it does (of the bytes that
    will be kept: an encoded body's is unknown until it is decoded)."""
    length = headers.get("content-length")
    if not length or not length.isdigit():
        return None
    if headers.get("content-encoding", "identity") != "identity":
        return None
    return int(length)


def _write_whole(
    data: bytes, sink: Sink, declared: int, output_type: str | None, ctype: str | None, fsync: bool
) -> Downloaded:
    """``_stream_to`` for a small body read whole: checked, then written in one go."""
    if len(data) != declared:
        raise TransportError(f"download truncated: got {len(data)} of {declared} bytes")
    _check_media(output_type, ctype, data[:HEAD_BYTES])
    sink.write_all(data, fsync=fsync)
    kind = content_type_of(ctype, data[:HEAD_BYTES])
    return Downloaded(len(data), hashlib.sha256(data).hexdigest(), kind)


def _check_media(output_type: str | None, content_type: str | None, head: bytes | None) -> None:
    """ResponseRefused if a run output's body is not the kind of file its type promises."""
    problem = media_problem(output_type, content_type, head) if output_type else None
    if problem:
        raise ResponseRefused(f"the {output_type} output {problem}")


__all__ = [
    "Downloaded",
    "FloraClient",
    "Lane",
    "RemoteError",
    "Reply",
    "RunHistory",
    "Sink",
    "check_fetch_url",
    "default_lane",
    "http_stack",
    "is_loopback",
    "lane_for",
    "map_http_errors",
    "parse_retry_after",
]

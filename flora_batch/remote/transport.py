"""An ``httpx`` transport over one ``aiohttp.ClientSession``: httpx's interface, aiohttp's cost.

httpx's own transport (httpcore + anyio + h11) costs ~5x the CPU per request of a bare
aiohttp loop (docs/performance.md, scenario 1).  This transport keeps everything above it
unchanged -- ``httpx.Request``/``httpx.Response``, streaming via ``aiter_bytes``/``aiter_raw``,
FloraClient's request gate and redirect checks -- and hands the wire to aiohttp:

* aiohttp follows no redirects and decompresses nothing: httpx decodes Content-Encoding
  itself from the raw bytes handed up here;
* bodies stream in both directions: a download is read as the socket delivers it, never
  held whole; an upload's ``httpx`` stream is fed to aiohttp chunk by chunk;
* the pool holds ``max_connections`` kept-alive connections (``KEEPALIVE_EXPIRY``);
* httpx's ``Timeout`` maps onto ``aiohttp.ClientTimeout``: pool -> ``connect`` (the wait
  for a pooled connection plus the connect), connect -> ``sock_connect``, read ->
  ``sock_read``.  aiohttp has no write timeout.

**Errors and money.**  ``client.map_http_errors`` resends nothing it cannot prove unsent:
only ``httpx.ConnectError``/``ConnectTimeout``/``PoolTimeout`` mean "the request never
left".  So only aiohttp's connector failures (``ClientConnectorError`` and its DNS / TLS /
refused subclasses, ``ConnectionTimeoutError``), all raised before a byte of the request
is written, become those.  Everything else -- the server closing the connection
(``ServerDisconnectedError``), a reset while writing or reading, a truncated or garbled
response, a read timeout -- may follow a request the server has acted on, and becomes a
``RemoteProtocolError``/``WriteError``/``ReadError``/``ReadTimeout`` (an
``AmbiguousCreate`` for a create).  httpx-aiohttp maps ``ServerDisconnectedError`` to
``ConnectTimeout``, which would hide a create that landed: that is the bug avoided here.

aiohttp itself re-sends an *idempotent* request (GET, PUT, ...) once when a kept-alive
connection turns out closed; it never re-sends a POST, so a create is sent at most once.

**The direct lane.**  ``AiohttpTransport.request`` sends a request without building any
httpx object and yields a ``Reply`` (status, headers, body chunks).  ``FloraClient`` uses
it for its JSON calls and downloads: httpx's ``AsyncClient`` (request building, header
normalising, auth and redirect machinery, the ``Response`` object) cost more CPU per job
than everything else flora-batch does (docs/performance.md, scenario 1).  It shares the
send and the error mapping above with ``handle_async_request``, so both lanes fail alike.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import httpx
from yarl import URL

#: Seconds an idle connection is kept for reuse: below the 60 s+ that load balancers
#: keep, so we close first rather than race the server's close with a new request.
KEEPALIVE_EXPIRY = 15.0
#: aiohttp's per-connection read buffer.  Larger reads mean fewer, bigger chunks for a
#: big download (scenario 5); it is the flow-control limit, so memory stays bounded.
READ_BUFSIZE = 1 << 20
#: The most compressed bytes handed up at once when the body has a Content-Encoding:
#: httpx inflates each chunk whole, and a deflate bomb grows ~1000x (64 KB -> 64 MB).
ENCODED_CHUNK = 1 << 16

# (aiohttp class, httpx class), first match wins: the order puts subclasses first.
# aiohttp's ServerTimeoutError is also ``asyncio.TimeoutError`` (an OSError), and
# ClientConnectorError is also a ClientOSError, hence the care with order.
_BEFORE_SENDING: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
)
_MAYBE_SENT: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # a garbled status line / headers
    (aiohttp.ClientConnectionResetError, httpx.WriteError),  # "cannot write to closing transport"
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (TimeoutError, httpx.ReadTimeout),
    (OSError, httpx.ReadError),  # ClientOSError (a reset while reading) and raw socket errors
)


def map_error(exc: Exception, *, reading_body: bool = False) -> httpx.TransportError | None:
    """The httpx exception for an aiohttp one ("never sent" only when that is proven).

    Args:
        exc: what aiohttp raised.
        reading_body: True once the response head has arrived (the request was sent).

    Returns:
        None for an exception that is not a transport failure (a bug): let it propagate.
    """
    table = _MAYBE_SENT if reading_body else _BEFORE_SENDING + _MAYBE_SENT
    for source, target in table:
        if isinstance(exc, source):
            return target(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, aiohttp.ClientError):
        # Unknown aiohttp failure: it may have followed the request, so not "never sent".
        return httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}")
    return None


_REDIRECTS = frozenset((301, 302, 303, 307, 308))


class Reply:
    """A response head from the direct lane, with its body to read (``aiter_bytes``).

    The part of ``httpx.Response`` that FloraClient reads, without building one: the
    status, case-insensitive headers, ``is_success``/``is_redirect`` and the body, whole
    (``aread``) or in chunks.  A body with a Content-Encoding is decoded by httpx (``_decoded``).
    """

    __slots__ = ("_body", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers
        self._body = _ResponseBody(response)

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def is_redirect(self) -> bool:
        return self.status_code in _REDIRECTS and "location" in self.headers

    async def aread(self) -> bytes:
        """The whole (decoded) body: for a small one, one read instead of a stream."""
        if self._body.encoded:
            return b"".join([chunk async for chunk in self._decoded()])
        try:
            return await self._body._response.read()
        except Exception as exc:
            mapped = map_error(exc, reading_body=True)
            if mapped is None:
                raise
            raise mapped from exc

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's (decoded) bytes, as the socket delivers them."""
        if self._body.encoded:
            return self._decoded()
        return self._body.__aiter__()

    async def _decoded(self) -> AsyncIterator[bytes]:
        # httpx's decoders, fed the raw chunks (ENCODED_CHUNK at most: see above).
        raw = self._body._response.raw_headers
        async for chunk in httpx.Response(
            self.status_code, headers=raw, stream=self._body
        ).aiter_bytes():
            yield chunk

    async def aclose(self) -> None:
        """Give the connection back (closed instead if the body was not read to its end)."""
        await self._body.aclose()


class _ResponseBody(httpx.AsyncByteStream):
    """An aiohttp response body as httpx's raw stream: chunks as the socket delivers them."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        coding = response.headers.get("Content-Encoding", "identity").strip().lower()
        self.encoded = coding not in ("", "identity")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                if self.encoded:
                    chunk = await content.read(ENCODED_CHUNK)
                else:
                    chunk = await content.readany()  # all that is buffered: big reads
            except Exception as exc:
                mapped = map_error(exc, reading_body=True)
                if mapped is None:
                    raise
                raise mapped from exc
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        # A fully read body already went back to the pool; an unfinished one is closed
        # with its connection (aiohttp never reuses a connection with unread bytes).
        self._response.release()


async def _request_body(stream: httpx.AsyncByteStream) -> AsyncIterator[bytes]:
    """httpx's streaming request body (multipart with a file) as an async iterable."""
    async for chunk in stream:
        yield chunk


class AiohttpTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncBaseTransport`` backed by one lazily created ``aiohttp.ClientSession``.

    The session is created on the first request, inside the running event loop (aiohttp
    binds a session to its loop), and closed by ``aclose``.

    Args:
        max_connections: the pool's size (FloraClient's ``max_connections``).
        keepalive_expiry: seconds an idle connection is kept for reuse.
        verify: an ``ssl.SSLContext``, or True for httpx's default (certifi) context.
    """

    def __init__(
        self,
        *,
        max_connections: int = 32,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool | None = None if verify is True else verify
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_expiry,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the cookies
            auto_decompress=False,  # httpx decodes Content-Encoding
            read_bufsize=READ_BUFSIZE,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),  # httpx's own, or none
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    def _ssl_for(self, scheme: str) -> ssl.SSLContext | bool:
        """httpx's TLS context (the CAs httpx would trust), built on the first HTTPS request:
        loading the CA bundle costs milliseconds that plain-HTTP (the emulator) never needs."""
        if scheme != "https":
            return True
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    def client_timeout(self, timeout: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
        """httpx's timeouts (``Timeout.as_dict()`` or a request's) as aiohttp's (cached)."""
        key = (timeout.get("pool"), timeout.get("connect"), timeout.get("read"))
        found = self._timeouts.get(key)
        if found is None:
            pool, connect, read = key
            found = aiohttp.ClientTimeout(
                total=None,
                connect=None if pool is None or connect is None else pool + connect,
                sock_connect=connect,
                sock_read=read,
            )
            self._timeouts[key] = found
        return found

    async def _send(
        self,
        method: str,
        url: URL,
        headers: Any,
        data: Any,
        timeout: aiohttp.ClientTimeout,
        sni_hostname: str | None = None,
    ) -> aiohttp.ClientResponse:
        """One request on the session, aiohttp's failures mapped (``map_error``)."""
        session = self._session or self._open()
        try:
            return await session.request(
                method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                compress=False,
                timeout=timeout,
                server_hostname=sni_hostname,
                ssl=self._ssl_for(url.scheme),
            )
        except Exception as exc:
            mapped = map_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: aiohttp.ClientTimeout,
    ) -> Reply:
        """The direct lane: send; return the ``Reply`` once its head is in (``aclose`` it).

        Args:
            url: absolute and already encoded (query included).
            headers: every header to send beyond aiohttp's own (Host, Accept,
                Content-Length); no Accept-Encoding is sent, so bodies come unencoded.
            timeout: from ``client_timeout``.
        """
        response = await self._send(method, URL(url, encoded=True), headers, content, timeout)
        return Reply(response)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; return as soon as the response head has arrived."""
        headers = request.headers.multi_items()
        data: Any
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            data = _request_body(request.stream)  # type: ignore[arg-type]
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        response = await self._send(
            request.method,
            URL(str(request.url), encoded=True),
            headers,
            data,
            self.client_timeout(request.extensions.get("timeout") or {}),
            request.extensions.get("sni_hostname"),
        )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode(),
            },
        )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


__all__ = ["KEEPALIVE_EXPIRY", "AiohttpTransport", "Reply", "map_error"]

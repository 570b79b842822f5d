"""The seam under ``FloraClient``: one ``Lane`` sends every request, tests and production alike.

``FloraClient`` builds every request the same way (URL, headers, body, timeout, the
request gate, the error mapping, the redirect checks) and hands it to its lane; only the
lane differs:

* ``AiohttpLane`` (the default): straight to ``transport.AiohttpTransport``'s
  ``request``, no httpx object built (a fifth of httpx's CPU per request,
  docs/performance.md, scenario 1);
* ``HttpxLane``: an ``httpx.AsyncClient`` over any httpx transport: the emulator
  in-process (``httpx.ASGITransport``: tests), httpx's own (``FLORA_BATCH_HTTP=httpx``),
  or a proxy from the environment (only httpx honours ``HTTPS_PROXY``).

A request with a multipart or streamed body (an asset upload) is built by httpx
(``send``) whichever the lane.  Both lanes raise httpx's exceptions, which the client
translates into the ``errors`` tree (``client.map_http_errors``).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import httpx

if TYPE_CHECKING:
    from .transport import AiohttpTransport


class Reply(Protocol):
    """What FloraClient reads of a response: ``httpx.Response`` or the aiohttp lane's."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def is_success(self) -> bool: ...
    @property
    def is_redirect(self) -> bool: ...
    async def aread(self) -> bytes: ...
    def aiter_bytes(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


class Lane(Protocol):
    """FloraClient's one door to the network."""

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None,
        timeout: float,
    ) -> Reply:  # fmt: skip
        """Send a request; return its reply once the head is in (the caller closes it).

        ``headers`` are all that is sent beyond the lane's own (Host, Content-Length);
        ``url`` is absolute and encoded; ``timeout`` is seconds to connect and to read.
        """

    async def send(self, request: httpx.Request, timeout: float) -> Reply:
        """Send a request httpx built (a multipart or streamed body)."""

    async def aclose(self) -> None:
        """Close the connection pool."""


@functools.lru_cache(maxsize=8)
def httpx_timeout(timeout: float) -> httpx.Timeout:
    """httpx's timeouts for ``timeout`` seconds: connect capped at 10 s (cached: a poll's
    timeout is one value)."""
    return httpx.Timeout(timeout, connect=min(timeout, 10.0))


class AiohttpLane:
    """The default lane: requests go straight to one ``AiohttpTransport``."""

    def __init__(self, transport: AiohttpTransport) -> None:
        self.transport = transport
        self._limits: dict[float, Any] = {}  # seconds -> aiohttp.ClientTimeout (a few)

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None,
        timeout: float,
    ) -> Reply:  # fmt: skip
        limits = self._limits.get(timeout)
        if limits is None:  # once per distinct timeout: the hot path builds nothing
            limits = self.transport.client_timeout(httpx_timeout(timeout).as_dict())
            self._limits[timeout] = limits
        return await self.transport.request(
            method, url, headers=headers, content=content, timeout=limits
        )

    async def send(self, request: httpx.Request, timeout: float) -> Reply:
        request.extensions["timeout"] = httpx_timeout(timeout).as_dict()
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self.transport.aclose()


class HttpxLane:
    """The lane of any httpx transport, through one ``httpx.AsyncClient`` (no redirects
    followed: the client checks each hop itself)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @classmethod
    def over(
        cls, transport: httpx.AsyncBaseTransport | None, *, max_connections: int
    ) -> HttpxLane:
        """A lane over ``transport`` (None: httpx's own, proxies from the environment)."""
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        client = httpx.AsyncClient(transport=transport, limits=limits, follow_redirects=False)
        return cls(client)

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None,
        timeout: float,
    ) -> Reply:  # fmt: skip
        request = self.client.build_request(
            method, url, headers=headers, content=content, timeout=httpx_timeout(timeout)
        )
        return await self.client.send(request, stream=True)

    async def send(self, request: httpx.Request, timeout: float) -> Reply:
        request.extensions["timeout"] = httpx_timeout(timeout).as_dict()
        return await self.client.send(request, stream=True)

    async def aclose(self) -> None:
        await self.client.aclose()

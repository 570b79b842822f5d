"""The aiohttp transport against real loopback sockets: what it hands httpx, and how it fails.

Each test starts a tiny asyncio server on 127.0.0.1 that misbehaves in one way (refuses,
closes before or during the response, stalls, resets, answers garbage) and checks the
httpx exception the transport raises and what ``FloraClient`` makes of it: only a
request that provably never left may be "could not connect" (safe to resend); anything
after the request may have reached the server is an ``AmbiguousCreate`` for a create.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import httpx
import pytest

from flora_batch.errors import AmbiguousCreate, ConfigError, TransportError
from flora_batch.remote.client import FloraClient, default_lane
from flora_batch.remote.lanes import AiohttpLane, HttpxLane
from flora_batch.remote.transport import ENCODED_CHUNK, AiohttpTransport, map_error
from flora_batch.types import RunInput

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
RUN_JSON = b'{"run": {"id": "run_1", "status": "pending"}}'
INPUTS = (RunInput("photo", "imageUrl", "https://example.com/a.png"),)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One whole HTTP/1.1 request (head and Content-Length body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + (await reader.readexactly(length) if length else b"")


def response(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    """A complete HTTP/1.1 response with a Content-Length."""
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """Serve ``handler`` on a loopback port; yields the base URL."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def client_for(url: str, *, read: float = 5.0, connect: float = 5.0) -> httpx.AsyncClient:
    """An httpx client over the aiohttp transport."""
    return httpx.AsyncClient(
        transport=AiohttpTransport(max_connections=4),
        timeout=httpx.Timeout(read, connect=connect),
        base_url=url,
    )


async def create_against(url: str, *, read: float = 5.0) -> BaseException:
    """What ``FloraClient.create_run`` raises against ``url``."""
    async with FloraClient(f"{url}/api/v1", "sk_test_x", timeout=read) as client:
        with pytest.raises(TransportError) as info:
            await client.create_run("wireframe", INPUTS, "key-1")
    return info.value


# -- failures before the request is sent: safe to resend ----------------------------------


async def test_refused_connection_is_a_connect_error() -> None:
    """A refused connection is httpx.ConnectError, and a create is not ambiguous."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    async with client_for(url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/x")
    assert type(await create_against(url)) is TransportError


async def test_connect_timeout_is_a_connect_timeout() -> None:
    """A connect that never completes (full backlog) is httpx.ConnectTimeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(8):  # fill the accept queue: later SYNs are dropped, connects hang
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(listener.getsockname())
        fillers.append(s)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        async with client_for(url, connect=0.2) as client:
            with pytest.raises(httpx.ConnectTimeout):
                await client.get("/x")
    finally:
        for s in [*fillers, listener]:
            s.close()


def test_connector_timeout_maps_to_connect_timeout() -> None:
    """aiohttp's connect timeout (raised before writing) is a "never sent" kind."""
    assert isinstance(map_error(aiohttp.ConnectionTimeoutError("t")), httpx.ConnectTimeout)


def test_connect_errors_are_not_trusted_once_reading() -> None:
    """Nothing raised while reading a body can say "never sent"."""
    for exc in (aiohttp.ConnectionTimeoutError("t"), aiohttp.ServerDisconnectedError()):
        mapped = map_error(exc, reading_body=True)
        assert not isinstance(mapped, httpx.ConnectError | httpx.ConnectTimeout)


def test_unknown_errors() -> None:
    """An unknown aiohttp error is a transport failure after sending; a bug propagates."""
    assert isinstance(map_error(aiohttp.ClientError("?")), httpx.RemoteProtocolError)
    assert map_error(ValueError("bug")) is None


# -- failures after the request may have arrived: ambiguous for a create ------------------


async def test_close_before_response_is_remote_protocol_error() -> None:
    """The server reads the request and closes: RemoteProtocolError, an AmbiguousCreate."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))

    async with serve(handler) as url:
        async with client_for(url) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("/x", content=b"{}")
        assert isinstance(await create_against(url), AmbiguousCreate)
    assert len([r for r in seen if r.startswith(b"POST /api/v1/")]) == 1  # sent once


async def test_close_mid_body_is_remote_protocol_error() -> None:
    """A body cut short of its Content-Length: RemoteProtocolError, an AmbiguousCreate."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + RUN_JSON[:10])
        await writer.drain()

    async with serve(handler) as url:
        async with client_for(url) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/x")
        assert isinstance(await create_against(url), AmbiguousCreate)


async def test_stall_is_read_timeout() -> None:
    """A server that never answers: httpx.ReadTimeout, an AmbiguousCreate."""
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await release.wait()

    async with serve(handler) as url:
        try:
            async with client_for(url, read=0.2) as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.get("/x")
            assert isinstance(await create_against(url, read=0.2), AmbiguousCreate)
        finally:
            release.set()


async def test_stall_mid_body_is_read_timeout() -> None:
    """A body that stops arriving: httpx.ReadTimeout while streaming."""
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await writer.drain()
        await release.wait()

    async with serve(handler) as url:
        try:
            async with client_for(url, read=0.2) as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.get("/x")
        finally:
            release.set()


async def test_garbage_is_remote_protocol_error() -> None:
    """A reply that is not HTTP: RemoteProtocolError, an AmbiguousCreate."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    async with serve(handler) as url:
        async with client_for(url) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/x")
        assert isinstance(await create_against(url), AmbiguousCreate)


async def test_reset_after_request_is_not_a_connect_error() -> None:
    """A TCP reset after the request arrived: a read/protocol error, an AmbiguousCreate."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async with serve(handler) as url:
        async with client_for(url) as client:
            with pytest.raises(httpx.TransportError) as info:
                await client.get("/x")
        assert isinstance(info.value, httpx.ReadError | httpx.RemoteProtocolError)
        assert isinstance(await create_against(url), AmbiguousCreate)


async def test_create_on_a_connection_closed_by_the_server_is_sent_once() -> None:
    """A kept-alive connection the server closes on the next POST: not re-sent by aiohttp."""
    posts: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # the first request: answered, connection kept
        writer.write(response(b'{"techniques": []}', "Content-Type: application/json"))
        await writer.drain()
        posts.append(await read_request(reader))  # the create: read, then closed

    async with serve(handler) as url:
        async with FloraClient(f"{url}/api/v1", "sk_test_x") as client:
            await client.list_techniques()
            with pytest.raises(AmbiguousCreate):
                await client.create_run("wireframe", INPUTS, "key-1")
    assert len(posts) == 1


# -- what a working exchange hands httpx -------------------------------------------------


async def test_redirects_are_not_followed() -> None:
    """A 302 comes back as itself: the client checks every hop (check_fetch_url)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(b"", "Location: http://10.0.0.1/secret", status="302 Found"))
        await writer.drain()

    async with serve(handler) as url, client_for(url) as client:
        got = await client.get("/x")
    assert got.status_code == 302
    assert got.headers["location"] == "http://10.0.0.1/secret"


async def test_content_encoding_is_decoded_by_httpx() -> None:
    """aiohttp hands the raw gzip bytes up; httpx decodes them once."""
    body = b"hello " * 1000
    packed = gzip.compress(body)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(packed, "Content-Encoding: gzip"))
        await writer.drain()

    async with serve(handler) as url, client_for(url) as client:
        async with client.stream("GET", "/x") as got:
            raw = b"".join([c async for c in got.aiter_raw()])
        assert raw == packed
        assert (await client.get("/x")).content == body


async def test_compressed_bodies_come_in_small_raw_chunks() -> None:
    """An encoded body is handed up 64 KB at a time: httpx inflates a chunk whole (bombs)."""
    packed = gzip.compress(b"\0" * (32 << 20))  # 32 MB of zeros in ~32 KB... and more
    packed += gzip.compress(bytes(range(256)) * 4096)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(packed, "Content-Encoding: gzip"))
        await writer.drain()

    async with serve(handler) as url, client_for(url) as client:
        async with client.stream("GET", "/x") as got:
            sizes = [len(c) async for c in got.aiter_raw()]
    assert sum(sizes) == len(packed)
    assert max(sizes) <= ENCODED_CHUNK


async def test_bodies_stream_without_being_held() -> None:
    """The first chunk arrives while the server still holds back the rest of the body."""
    more = asyncio.Event()
    chunk = b"x" * 65536

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {4 * len(chunk)}\r\n\r\n".encode())
        writer.write(chunk)
        await writer.drain()
        await more.wait()  # the rest only once the client has seen a chunk
        writer.write(chunk * 3)
        await writer.drain()

    async with serve(handler) as url, client_for(url) as client:
        async with client.stream("GET", "/x") as got:
            total = 0
            async for part in got.aiter_raw():
                total += len(part)
                more.set()
    assert total == 4 * len(chunk)


async def test_streamed_upload_keeps_its_length(tmp_path: Path) -> None:
    """A multipart upload from a file streams through with its Content-Length (no chunking)."""
    seen: list[bytes] = []
    path = tmp_path / "a.bin"
    path.write_bytes(b"payload" * 1000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(response(b"ok"))
        await writer.drain()

    async with serve(handler) as url, client_for(url) as client:
        with open(path, "rb") as fh:
            got = await client.post("/up", data={"k": "v"}, files={"file": ("a.bin", fh)})
    assert got.status_code == 200
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"payload" * 1000 in body


async def test_connections_are_kept_alive() -> None:
    """Sequential requests reuse one connection."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in range(3):
            await read_request(reader)
            writer.write(response(b"{}"))
            await writer.drain()

    async with serve(handler) as url, client_for(url) as client:
        for _ in range(3):
            assert (await client.get("/x")).status_code == 200
    assert connections == 1


# -- choosing the stack -----------------------------------------------------------------


def test_default_lane_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp's by default; FLORA_BATCH_HTTP=httpx gives httpx's own; others are refused."""
    assert isinstance(default_lane(8), AiohttpLane)
    monkeypatch.setenv("FLORA_BATCH_HTTP", "httpx")
    assert isinstance(default_lane(8), HttpxLane)
    monkeypatch.setenv("FLORA_BATCH_HTTP", "curl")
    with pytest.raises(ConfigError):
        default_lane(8)


def test_a_proxy_in_the_environment_gets_httpx_own_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx routes through HTTPS_PROXY only with a transport it builds: so it builds it."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    lane = FloraClient("https://app.flora.ai/api/v1", "sk_test")._lane
    assert isinstance(lane, HttpxLane) and lane.client._mounts, "httpx mounted no proxy"


def test_timeouts_map_connect_and_read() -> None:
    """httpx's connect goes to sock_connect, read to sock_read, pool + connect to connect."""
    timeout = httpx.Timeout(30.0, connect=5.0, pool=10.0).as_dict()
    got = AiohttpTransport().client_timeout(timeout)
    assert (got.sock_connect, got.sock_read, got.connect, got.total) == (5.0, 30.0, 15.0, None)

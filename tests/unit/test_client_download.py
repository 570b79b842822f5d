"""FloraClient.download over real loopback sockets and the default (aiohttp) transport.

The checks that keep a bad body out of the results: the hash covers every byte in order,
a body short of its Content-Length is a TransportError, a body over the cap is refused
(declared or streamed), and an output whose first bytes are not its type is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from flora_batch.errors import ResponseRefused, TransportError
from flora_batch.remote.client import Downloaded, FloraClient
from flora_batch.results.local import FileSink

Body = Callable[[asyncio.StreamWriter], Awaitable[None]]
PNG = b"\x89PNG\r\n\x1a\n"


@asynccontextmanager
async def serving(body: Body) -> AsyncIterator[str]:
    """A loopback server answering every GET with ``body``; yields its origin."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await body(writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def sends(data: bytes, length: int | None = None, ctype: str = "image/png") -> Body:
    """Answer with ``data`` and a Content-Length of ``length`` (default: the true one)."""
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(data) if length is None else length}\r\n\r\n"
    ).encode()

    async def body(writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        for start in range(0, len(data), 1 << 18):  # in pieces, as a network would
            writer.write(data[start : start + (1 << 18)])
            await writer.drain()

    return body


async def fetch(
    origin: str, dest: Path, *, max_bytes: int = 1 << 30, output_type: str | None = None
) -> Downloaded:
    """``FloraClient.download`` of the server's one file, over the default transport."""
    async with FloraClient(f"{origin}/api/v1", "sk_test_x") as client:
        return await client.download(
            f"{origin}/out.png", FileSink(dest), max_bytes=max_bytes, output_type=output_type
        )


async def test_big_body_is_hashed_and_written_whole(tmp_path: Path) -> None:
    """A multi-megabyte body, arriving in pieces, is written and hashed in order."""
    data = PNG + os.urandom(6 << 20)
    dest = tmp_path / "out.png"
    async with serving(sends(data)) as origin:
        got = await fetch(origin, dest, output_type="imageUrl")
    assert dest.read_bytes() == data
    assert got.size == len(data)
    assert got.sha256 == hashlib.sha256(data).hexdigest()


async def test_short_body_is_a_transport_error(tmp_path: Path) -> None:
    """A body that ends before its Content-Length never passes as complete."""
    async with serving(sends(PNG + b"x" * 1000, length=5000)) as origin:
        with pytest.raises(TransportError):
            await fetch(origin, tmp_path / "out.png")


async def test_declared_size_over_the_cap_is_refused(tmp_path: Path) -> None:
    """A Content-Length over max_bytes is refused before any byte is written."""
    async with serving(sends(PNG + b"x" * 5000)) as origin:
        with pytest.raises(ResponseRefused, match="cap"):
            await fetch(origin, tmp_path / "out.png", max_bytes=1000)


async def test_streamed_size_over_the_cap_is_refused(tmp_path: Path) -> None:
    """A body without Content-Length is cut off at the cap."""
    data = PNG + b"x" * (3 << 20)

    async def body(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
        writer.write(data)

    async with serving(body) as origin:
        with pytest.raises(ResponseRefused, match="cap"):
            await fetch(origin, tmp_path / "out.png", max_bytes=1 << 20)


async def test_wrong_media_is_refused(tmp_path: Path) -> None:
    """An image output whose first bytes are HTML is refused."""
    async with serving(sends(b"<html><body>login</body></html>", ctype="image/png")) as origin:
        with pytest.raises(ResponseRefused):
            await fetch(origin, tmp_path / "out.png", output_type="imageUrl")

"""FloraClient's direct lane (``AiohttpTransport.open``): the same requests without httpx's client.

On the default transport, JSON calls and downloads skip ``httpx.AsyncClient``.  These
tests read what reaches a loopback server and what the client makes of the answers, so
the lane cannot drift from what the httpx lane sends: the bearer token only to the API,
the idempotency key in header and body, the query string, compact JSON, and bodies with
a Content-Encoding decoded all the same.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import httpx
import pytest
from test_transport import read_request, response, serve

from flora_batch.errors import AmbiguousCreate, RateLimited, TransportError
from flora_batch.remote.client import FloraClient
from flora_batch.remote.lanes import AiohttpLane, HttpxLane
from flora_batch.remote.transport import AiohttpTransport
from flora_batch.results.local import FileSink
from flora_batch.types import RunInput

INPUTS = (RunInput("photo", "imageUrl", "https://example.com/a.png"),)
RUN = b'{"id": "run_1", "status": "pending", "technique_id": "t1"}'


def head_of(request: bytes) -> dict[str, str]:
    """The request's headers, names lower-cased."""
    lines = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


class Recorder:
    """A loopback server answering each request with the next canned response."""

    def __init__(self, *answers: bytes) -> None:
        self.answers = list(answers)
        self.seen: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while self.answers:
            self.seen.append(await read_request(reader))
            writer.write(self.answers.pop(0))
            await writer.drain()


def test_every_client_sends_through_its_one_lane() -> None:
    """One door: our transport (or none) gives the aiohttp lane, any other httpx transport
    (the emulator in-process) the httpx lane; the client's code above the lane is one."""
    assert isinstance(FloraClient("http://127.0.0.1:1/api/v1", "sk")._lane, AiohttpLane)
    asgi = httpx.ASGITransport(app=lambda *a: None)  # type: ignore[arg-type]
    over_asgi = FloraClient("http://127.0.0.1:1/api/v1", "sk", transport=asgi)._lane
    assert isinstance(over_asgi, HttpxLane)
    passed = AiohttpTransport(max_connections=2)
    lane = FloraClient("http://127.0.0.1:1/api/v1", "sk", transport=passed)._lane
    assert isinstance(lane, AiohttpLane) and lane.transport is passed


async def test_a_create_sends_key_token_and_compact_json() -> None:
    """What a create puts on the wire: POST, bearer, key in header and body, JSON type."""
    server = Recorder(response(RUN, "Content-Type: application/json", "request-id: req_9"))
    async with serve(server) as url, FloraClient(f"{url}/api/v1", "sk_test_x") as client:
        run = await client.create_run("wireframe", INPUTS, "key-1")
    assert (run.run_id, run.request_id) == ("run_1", "req_9")
    sent = server.seen[0]
    assert sent.startswith(b"POST /api/v1/techniques/wireframe/runs HTTP/1.1\r\n")
    headers = head_of(sent)
    assert headers["authorization"] == "Bearer sk_test_x"
    assert headers["idempotency-key"] == "key-1"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("flora-batch/")
    assert "accept-encoding" not in headers  # so bodies come unencoded
    body = sent.split(b"\r\n\r\n", 1)[1]
    assert b": " not in body and json.loads(body)["idempotency_key"] == "key-1"


async def test_a_query_string_is_encoded() -> None:
    """Paged listings carry their parameters, escaped, in the URL."""
    page = b'{"technique_runs": [], "meta": {"next_cursor": null}}'
    server = Recorder(response(page, "Content-Type: application/json"))
    async with serve(server) as url, FloraClient(f"{url}/api/v1", "sk") as client:
        assert (await client.technique_runs("t 1&x")).runs == []
    assert server.seen[0].startswith(
        b"GET /api/v1/technique-runs?technique_id=t+1%26x&limit=100 HTTP/1.1"
    )


async def test_gzip_json_is_decoded() -> None:
    """A server that compresses anyway: the JSON is still read (httpx's decoder)."""
    server = Recorder(response(gzip.compress(RUN), "Content-Encoding: gzip"))
    async with serve(server) as url, FloraClient(f"{url}/api/v1", "sk") as client:
        run = await client.get_run("wireframe", "run_1")
    assert run.run_id == "run_1"


async def test_a_download_carries_no_token_and_is_decoded(tmp_path: Path) -> None:
    """A media host never sees the API key; a gzip body is saved decoded, hashed as saved."""
    body = b"\x89PNG\r\n\x1a\n" + b"pixels" * 500
    server = Recorder(response(gzip.compress(body), "Content-Encoding: gzip"))
    dest = tmp_path / "out.png"
    async with serve(server) as url, FloraClient(f"{url}/api/v1", "sk_secret") as client:
        got = await client.download(f"{url}/media/out.png", FileSink(dest), output_type="imageUrl")
    assert dest.read_bytes() == body and got.size == len(body)
    assert "authorization" not in head_of(server.seen[0])


async def test_an_error_envelope_keeps_its_meaning() -> None:
    """A 429 with Retry-After becomes RateLimited with the wait; the lane reads headers alike."""
    envelope = b'{"error": {"code": "rate_limited", "message": "slow down"}}'
    server = Recorder(
        response(envelope, "Retry-After: 7", "request-id: req_1", status="429 Too Many Requests")
    )
    async with serve(server) as url, FloraClient(f"{url}/api/v1", "sk") as client:
        with pytest.raises(RateLimited) as info:
            await client.get_run("wireframe", "run_1")
    assert (info.value.retry_after, info.value.request_id) == (7.0, "req_1")


async def test_malformed_json_after_a_create_is_ambiguous() -> None:
    """A 200 whose body is not JSON: the run may exist, so the create is ambiguous."""
    server = Recorder(response(b"<html>oops</html>"))
    async with serve(server) as url, FloraClient(f"{url}/api/v1", "sk") as client:
        with pytest.raises(AmbiguousCreate):
            await client.create_run("wireframe", INPUTS, "key-1")


@pytest.mark.parametrize("stack", ["aiohttp", "httpx"])
async def test_a_poll_s_own_timeout_wins(stack: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``get_run(timeout=...)`` gives up after its own timeout, not the client's 60 s,
    on either lane; a hung poll is a retryable transport error."""
    monkeypatch.setenv("FLORA_BATCH_HTTP", stack)
    stall = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await stall.wait()  # never answers

    async with serve(handler) as url, FloraClient(f"{url}/api/v1", "sk", timeout=60) as client:
        with pytest.raises(TransportError) as info:
            await asyncio.wait_for(client.get_run("wireframe", "run_1", timeout=0.3), 10)
    assert info.value.retryable
    stall.set()

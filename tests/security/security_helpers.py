"""Shared helpers for the security tests: the real CLI as a subprocess, batches on disk,
the emulator's request counts, and an in-process hostile FLORA behind ``MockTransport``.

The emulator is faithful to FLORA; hostility (bad URLs, lying Content-Types, huge or
malformed JSON, odd statuses) is the tests' job, so it is served by ``HostileFlora``
here, never by the emulator.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import emulators

FAST = ["--min-poll", "0.05", "--rate", "0", "--timeout", "2"]
#: The manifest every batch here uses, over ``p.csv`` (or ``rows``).
MANIFEST = """\
name: b
technique: studio-shot
rows: {rows}
id: sku
inputs:
  product: "{{image_url}}"
output:
  dir: results
  name: "{name}"
"""
#: ``file:line[:column]: message`` as editors and CI annotations read it.
LOCATED = re.compile(r"^(?P<file>/[^:\n]+?):(?P<line>\d+)(?::(?P<column>[^:\s]+))?: \S")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 56


@dataclass
class CliResult:
    """A finished CLI run."""

    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def products(count: int) -> list[dict[str, str]]:
    """``count`` good product rows."""
    return [
        {"sku": f"SKU-{i}", "title": f"Mug {i}", "image_url": f"https://media.flora.ai/{i}.jpg"}
        for i in range(1, count + 1)
    ]


def csv_text(rows: list[dict[str, str]]) -> str:
    """Rows as CSV (quoted as needed)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_batch(
    folder: Path,
    rows: list[dict[str, str]] | None = None,
    *,
    name: str = "{sku}/{output_id}{ext}",
    extra: str = "",
) -> Path:
    """A manifest over ``p.csv`` through studio-shot; returns the manifest's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.csv").write_text(csv_text(rows or products(4)), encoding="utf-8")
    manifest = folder / "b.yaml"
    manifest.write_text(MANIFEST.format(rows="p.csv", name=name) + extra, encoding="utf-8")
    return manifest


def cli_env(
    server: Any | None = None, *, key: str | None = None, home: Path | None = None
) -> dict[str, str]:
    """A user's environment: the emulator's URL and a key, no FLORA_* of the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLORA_")}
    if home is not None:  # no config file of the developer's either
        env["HOME"] = str(home)
        env["XDG_CONFIG_HOME"] = str(home / ".config")
    if server is not None:
        env["FLORA_BASE_URL"] = server.base_url
        env["FLORA_API_KEY"] = server.api_key
    if key is not None:
        env["FLORA_API_KEY"] = key
    return env


def cli_cmd(*args: str) -> list[str]:
    """The real command line."""
    return [sys.executable, "-m", "flora_batch", *args]


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> CliResult:
    """Run ``flora-batch ARGS`` to completion and capture its output."""
    proc = subprocess.run(cli_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def creates(server: Any) -> int:
    """Paid requests the emulator has seen (every create, whatever its answer)."""
    counts = server.emulator.request_counts
    return sum(v for k, v in counts.items() if k.startswith("POST") and k.endswith("/runs"))


def requests(server: Any) -> int:
    """Every request the emulator has seen."""
    return sum(server.emulator.request_counts.values())


def assert_no_traceback(res: CliResult) -> None:
    """Nothing the CLI printed is a Python traceback."""
    assert "Traceback (most recent call last)" not in res.text, res.text


@pytest.fixture
def emulator() -> Iterator[Callable[..., Any]]:
    """Start emulators on loopback ports: ``emulator(**EmulatorConfig)``; stopped after."""
    with emulators(2000.0) as start:
        yield start


# --- an in-process hostile FLORA -------------------------------------------------------

Media = Callable[[httpx.Request], httpx.Response]


@dataclass
class HostileFlora:
    """A FLORA that answers with whatever a test sets: run bodies, outputs and media.

    ``create`` answers every create (a list: one per create, in order); polls get
    ``polls`` in order, then ``final``
    (each a dict, or raw bytes sent as JSON).  ``media`` maps a URL path to a handler;
    paths outside ``/api/v1/`` are media.  ``creates`` counts paid requests and ``keys``
    their idempotency keys; ``fetched`` lists every media URL requested.
    """

    create: dict[str, Any] | bytes | list[dict[str, Any]] = field(default_factory=dict)
    polls: list[dict[str, Any] | bytes] = field(default_factory=list)
    final: dict[str, Any] | bytes | None = None
    media: dict[str, Media] = field(default_factory=dict)
    creates: int = 0
    keys: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        """The transport to hand to ``run_batch``."""
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Route one request."""
        path = request.url.path
        if not path.startswith("/api/v1/"):
            self.fetched.append(str(request.url))
            handler = self.media.get(path)
            return handler(request) if handler else httpx.Response(404)
        if path.endswith("/techniques/studio-shot"):
            return httpx.Response(200, json=TECHNIQUE)
        if request.method == "POST" and path.endswith("/runs"):
            self.creates += 1
            self.keys.append(request.headers.get("idempotency-key", ""))
            if isinstance(self.create, list):
                return self._body(self.create[self.creates - 1])
            return self._body(self.create)
        if "/runs/" in path:
            later = self.final or self.create
            assert not isinstance(later, list), "a list of creates needs a final"
            return self._body(self.polls.pop(0) if self.polls else later)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})

    @staticmethod
    def _body(body: dict[str, Any] | bytes) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(200, content=body, headers={"content-type": "application/json"})
        return httpx.Response(200, json=body)


TECHNIQUE = {
    "technique_id": "tech_studio-shot",
    "slug": "studio-shot",
    "name": "Studio shot",
    "run_cost": 0.06,
    "inputs": [{"id": "product", "type": "imageUrl"}],
    "outputs": [{"id": "shot", "type": "imageUrl"}],
}


def completed(
    url: str,
    *,
    output_type: str = "imageUrl",
    camel: bool = False,
    output_id: str = "shot_1",
    run_id: str = "run_1",
) -> dict[str, Any]:
    """A completed run with one output at ``url``, in either dialect."""
    if camel:
        output = {"outputId": output_id, "type": output_type, "url": url}
        return {
            "runId": run_id,
            "status": "completed",
            "progress": 100,
            "chargedCost": 0.06,
            "outputs": [output],
        }
    output = {"output_id": output_id, "type": output_type, "url": url}
    return {
        "run_id": run_id,
        "status": "completed",
        "progress": 100,
        "charged_cost": 0.06,
        "outputs": [output],
    }


def body(content: bytes, content_type: str | None = "image/png", **headers: str) -> Media:
    """A media handler answering 200 with ``content``."""
    if content_type is not None:
        headers["content-type"] = content_type
    return lambda request: httpx.Response(200, content=content, headers=headers)


def redirect(location: str) -> Media:
    """A media handler answering 302 to ``location``."""
    return lambda request: httpx.Response(302, headers={"location": location})


def json_bytes(data: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(data).encode()


@contextmanager
def serve(flora: HostileFlora) -> Iterator[str]:
    """``flora`` on a real loopback socket (uvicorn in a thread); yields its API base URL."""
    import socket
    import threading

    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope["query_string"].decode()
        url = f"http://127.0.0.1{scope['path']}" + (f"?{query}" if query else "")
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"]]
        resp = flora.handle(httpx.Request(scope["method"], url, headers=headers, content=body))
        raw = [(k.encode(), v.encode()) for k, v in resp.headers.items()]
        await send({"type": "http.response.start", "status": resp.status_code, "headers": raw})
        await send({"type": "http.response.body", "body": resp.read()})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()

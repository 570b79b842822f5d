"""The emulator in its own process, so its CPU is never counted against the client.

``python -m bench.emu_proc --speed S [--max-running C] [--server hypercorn]`` binds a
loopback port, prints one JSON line ``{"port": N}`` and serves until its standard input
closes (the parent died or is done) or it gets SIGTERM.

A line ``preload FILE`` on standard input creates runs straight on the emulator's state
(no HTTP): FILE holds ``[[slug, inputs, idempotency_key], ...]``; the run ids are
written, in the same order, to ``FILE + ".out"`` and a line ``{"preloaded": N}`` is
printed.  Scenario 4 uses it to put 10,000 runs in flight at once without paying for
10,000 creates of setup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from flora_batch.emulator import Emulator, EmulatorConfig
from flora_batch.emulator.validation import CreateRequest
from flora_batch.types import RunInput


def _preload(emu: Emulator, path: Path) -> None:
    jobs = json.loads(path.read_text())
    ids: list[str] = []
    for slug, inputs, key in jobs:
        technique = emu.catalog.get(slug)
        assert technique is not None, slug
        request = CreateRequest(tuple(RunInput(**i) for i in inputs), idempotency_key=key)
        ids.append(emu.create_run(technique, request).run.run_id)
    Path(f"{path}.out").write_text(json.dumps(ids))


def _wait_for_eof_or_term(emu: Emulator) -> None:
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())

    def stdin_watch() -> None:
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "preload":
                _preload(emu, Path(arg))
                print(json.dumps({"preloaded": arg}), flush=True)
        done.set()

    threading.Thread(target=stdin_watch, daemon=True).start()
    done.wait()


def _serve_uvicorn(config: EmulatorConfig) -> None:
    """``serve.start_server``, but on a socket made with ``IPPROTO_TCP``.

    ``serve._bind`` makes its socket with protocol 0; asyncio sets TCP_NODELAY only on
    sockets whose ``proto`` is ``IPPROTO_TCP``, so every response after the first on a
    kept-alive connection waits ~40 ms for the client's delayed ACK (Nagle).  That
    would swamp every latency measured here; see docs/performance.md.
    """
    emu = Emulator(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            emu.app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_keep_alive=75,  # uvicorn's 5 s would race the 2-s waits of every side
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    _wait_for_eof_or_term(emu)
    server.should_exit = True
    thread.join(5)


def _serve_hypercorn(config: EmulatorConfig) -> None:
    """The same app under Hypercorn, which also speaks HTTP/2 (h2c, prior knowledge)."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    hc = Config()
    hc.bind = [f"127.0.0.1:{port}"]
    hc.loglevel = "WARNING"
    hc.accesslog = None
    hc.keep_alive_timeout = 60
    emu = Emulator(config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)

        def on_stdin() -> None:
            if not sys.stdin.read():
                stop.set()

        loop.add_reader(sys.stdin.fileno(), on_stdin)
        task = asyncio.ensure_future(serve(emu.app, hc, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        print(json.dumps({"port": port}), flush=True)
        await task

    asyncio.run(main())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.emu_proc")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--max-running", type=int, default=None)
    parser.add_argument("--server", choices=["uvicorn", "hypercorn"], default="uvicorn")
    args = parser.parse_args(argv)
    kw: dict[str, Any] = {"speed": args.speed, "max_running": args.max_running}
    config = EmulatorConfig(**kw)
    if args.server == "hypercorn":
        _serve_hypercorn(config)
    else:
        _serve_uvicorn(config)


if __name__ == "__main__":
    main()

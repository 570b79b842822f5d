"""Scenario 5's two processes.

``python -m bench.big_file serve FILE``: a tiny HTTP/1.1 server on a loopback port that
answers ``GET /small`` with 16 bytes and any other GET with FILE (``sendfile``, so the
server costs almost nothing); prints ``{"port": N}`` and serves until its standard
input closes.

``python -m bench.big_file fetch '<json>'``: one download, by ``flora`` (``FloraClient
.download``: streamed, hashed, size-checked) or ``httpx`` (a bare stream-to-file); prints
wall, CPU and the growth of this process's RSS during the download (sampled every
10 ms from /proc/self/status).  Each side first fetches ``/small`` with the same client,
untimed, so lazy imports and the connection set-up are not counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _serve(path: Path) -> None:
    size = path.stat().st_size
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\nConnection: close\r\n\r\n"
    ).encode()

    small = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 16\r\nConnection: close\r\n\r\n"
    ) + b"0123456789abcdef"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            if request.startswith(b"GET /small "):
                writer.write(small)
                await writer.drain()
                return
            writer.write(head)
            await writer.drain()
            with open(path, "rb") as fh:
                await asyncio.get_running_loop().sendfile(writer.transport, fh)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 1024):
            done.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await done.wait()
    server.close()


async def _fetch_flora(url: str, dest: Path, clock: list[float]) -> dict[str, Any]:
    from flora_batch.remote.client import FloraClient
    from flora_batch.results.local import FileSink

    async with FloraClient("http://127.0.0.1/api/v1", "sk_test_emulator") as client:
        await client.download(url.rsplit("/", 1)[0] + "/small", FileSink(dest))
        clock.append(time.process_time())
        clock.append(time.perf_counter())
        got = await client.download(url, FileSink(dest), max_bytes=1 << 40)
    return {"size": got.size, "sha256": got.sha256}


async def _fetch_httpx(url: str, dest: Path, clock: list[float]) -> dict[str, Any]:
    import httpx

    async def fetch(client: httpx.AsyncClient, url: str) -> int:
        size = 0
        async with client.stream("GET", url) as resp:
            with open(dest, "wb") as fh:
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    fh.write(chunk)
        return size

    async with httpx.AsyncClient(timeout=120) as client:
        await fetch(client, url.rsplit("/", 1)[0] + "/small")
        clock.append(time.process_time())
        clock.append(time.perf_counter())
        size = await fetch(client, url)
    return {"size": size}


def _fetch(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx  # noqa: F401

    import flora_batch.remote.client  # noqa: F401  # imports before the clock

    dest = Path(spec["dest"])
    fn = _fetch_flora if spec["side"] == "flora" else _fetch_httpx
    peak = [_rss_mb()]
    start_rss = peak[0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clock: list[float] = []
    out = asyncio.run(fn(spec["url"], dest, clock))
    cpu, wall = time.process_time() - clock[0], time.perf_counter() - clock[1]
    stop.set()
    sampler.join()
    out.update(wall=wall, cpu=cpu, rss_start=start_rss, rss_growth=peak[0] - start_rss)
    if spec["side"] == "flora" and spec.get("commit"):
        from flora_batch.results.local import Results

        results = Results(dest.parent / "results")
        results.prepare()
        tmp = results.temp_path()
        os.replace(dest, tmp)
        t0 = time.perf_counter()
        final = results.commit(tmp, "big.bin")
        out["commit_seconds"] = time.perf_counter() - t0
        final.unlink()
    else:
        dest.unlink()
    return out


def main() -> None:
    if sys.argv[1] == "serve":
        asyncio.run(_serve(Path(sys.argv[2])))
    else:
        arg = sys.argv[2]
        spec = json.loads(Path(arg[1:]).read_text() if arg.startswith("@") else arg)
        print(json.dumps(_fetch(spec)))


if __name__ == "__main__":
    main()

"""One measured side, in a fresh interpreter: ``python -m bench.side '<json spec>'``.

The spec names the side (``flora``, ``httpx``, ``aiohttp``), its inputs, and
``sniffio``: ``"absent"`` hides an installed sniffio the way a missing one behaves (the
failing ``import sniffio`` still searches every ``sys.path`` entry; see
``_HideSniffio``), ``"present"`` requires it.  Prints one JSON line: ``cpu`` is this
process's CPU time (user + system, ``time.process_time``) around the work alone.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


class _HideSniffio(importlib.abc.MetaPathFinder):
    """Makes ``import sniffio`` fail at the cost of a real miss.

    A module that is not installed is looked for by ``PathFinder`` in every entry of
    ``sys.path`` before ``ModuleNotFoundError``; this finder does that same search for
    a name that does not exist, then raises, so httpcore pays what it pays without
    sniffio.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname != "sniffio":
            return None
        importlib.machinery.PathFinder.find_spec("sniffio_is_not_installed_here")
        raise ModuleNotFoundError("No module named 'sniffio'", name="sniffio")


def _set_sniffio(mode: str) -> bool:
    if mode == "absent":
        sys.modules.pop("sniffio", None)
        sys.meta_path.insert(0, _HideSniffio())
        return True
    if mode == "present":
        import sniffio  # noqa: F401  # fails loudly if the bench extra is not installed

        return True
    return False


def _loop_side(spec: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    from bench import loops

    cfg = loops.LoopConfig(
        base_url=spec["base_url"],
        api_key="sk_test_emulator",
        jobs=[(j[0], j[1], j[2]) for j in spec["jobs"]],
        results=Path(spec["results"]),
        concurrency=spec["concurrency"],
        first_wait=spec["first_wait"],
        interval=spec["interval"],
        key_prefix=spec.get("key_prefix", "bare"),
    )
    if spec["side"] == "aiohttp":
        import aiohttp  # noqa: F401  # imported before the clock starts

        coro = loops.aiohttp_loop(cfg)
    else:
        coro = loops.httpx_loop(cfg, _client_kw(spec.get("stack", "default")))
    t0 = os.times()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    trace = asyncio.run(coro)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    t1 = os.times()
    return {
        "cpu": cpu,
        "user": t1.user - t0.user,
        "sys": t1.system - t0.system,
        "wall": wall,
        "done": trace.done,
        "failed": trace.failed,
        "polls": trace.polls if spec.get("record") else None,
        "noticed": trace.noticed if spec.get("record") else None,
    }


def _client_kw(stack: str) -> dict[str, Any]:
    """httpx client arguments for one variant of the stack."""
    import httpx

    same_pool = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    if stack == "default":
        return {}
    if stack == "pool32":
        return {"limits": same_pool}
    if stack == "pool256":
        return {"limits": httpx.Limits(max_connections=256, max_keepalive_connections=256)}
    if stack == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return {"transport": AiohttpTransport(limits=same_pool)}
    if stack == "flora":  # flora-batch's own aiohttp transport (client.py's default)
        from flora_batch.remote.transport import AiohttpTransport as FloraTransport

        return {"transport": FloraTransport(max_connections=32)}
    if stack == "http2":
        return {"http1": False, "http2": True, "limits": same_pool}
    if stack == "http1-pool32":
        return {"limits": same_pool}
    raise ValueError(stack)


def _flora_side(spec: dict[str, Any]) -> dict[str, Any]:
    import flora_batch.remote.transport  # noqa: F401  # aiohttp is imported before the clock
    from bench.flora_side import run_flora

    return run_flora(
        Path(spec["manifest"]),
        base_url=spec["base_url"],
        ledger=Path(spec["ledger"]),
        results=Path(spec["results"]),
        concurrency=spec["concurrency"],
        scale=spec["scale"],
        transport=spec.get("transport", "default"),
        record=spec.get("record", False),
        max_poll=spec.get("max_poll", 30.0),
        submit_rate=spec.get("submit_rate", 0.0),
        max_runtime=spec.get("max_runtime"),
        gate=spec.get("gate"),
    )


def main() -> None:
    spec = (
        json.loads(sys.argv[1])
        if not sys.argv[1].startswith("@")
        else json.loads(Path(sys.argv[1][1:]).read_text())
    )
    _set_sniffio(spec.get("sniffio", "as-installed"))
    if spec["side"] == "flora":
        out = _flora_side(spec)
    else:
        out = _loop_side(spec)
    out["sniffio_loaded"] = "sniffio" in sys.modules
    print(json.dumps(out))


if __name__ == "__main__":
    main()

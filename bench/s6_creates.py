"""Scenario 6: what "one unidentified create per technique" costs, at FLORA-like times.

flora-batch never has two creates of one technique in the air whose runs are not on
disk (docs/design.md, "One unknown create per technique"): that is what lets a lost
create's run be told apart in the run history.  So creates of one technique go one after
the other, each once the answer of the one before is in.  The cost depends on how long
FLORA takes to answer a create (L) against how long its runs take (T) and how many runs
are kept in flight (C): the gate is free while C/T creates a second fit in 1/L.

Here a batch of ``4 C`` jobs of one 20-s technique (the catalog's shortest: the worst
case) runs in process against the emulator, every duration divided by ``SPEED``
(the create latency too), once as shipped and once with the gate switched off (every
create free to overlap: flora-batch before issue #16), in the same run.  Times are
reported in FLORA seconds (wall × ``SPEED``).  The ledger's commit window (20 ms) is
not divided, so at ``SPEED`` 5 each create's wait for its commit weighs five times what
it weighs against FLORA: the cost shown is an upper bound.

``python -m bench.s6_creates`` prints the table (about two minutes).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from flora_batch import retrying
from flora_batch.config import Settings
from flora_batch.emulator import Emulator, EmulatorConfig
from flora_batch.manifest import load_manifest
from flora_batch.pipeline import run_batch
from flora_batch.worker import creates

from .common import write_manifest

SPEED = 5.0
RUN_SECONDS = 20.0  # wireframe's typical run time in the catalog


@dataclass(frozen=True)
class Case:
    """One batch: create latency (FLORA seconds) and runs in flight."""

    latency: float
    concurrency: int


CASES = (Case(0.3, 8), Case(1.0, 8), Case(0.3, 32), Case(1.0, 32))


@contextmanager
def gate(on: bool) -> Iterator[None]:
    """The gate as shipped, or switched off (every create may leave at once)."""
    shipped = creates.Creates.may_leave
    if not on:
        creates.Creates.may_leave = lambda self, rec: True  # type: ignore[method-assign]
    try:
        yield
    finally:
        creates.Creates.may_leave = shipped  # type: ignore[method-assign]


async def one_batch(work: Path, case: Case, gated: bool) -> float:
    """FLORA seconds from the start to the last job done."""
    emu = Emulator(EmulatorConfig(speed=SPEED, create_latency=case.latency / SPEED))
    rows = 4 * case.concurrency
    tag = f"c{case.concurrency}-l{case.latency}-{'gated' if gated else 'free'}"
    manifest = write_manifest(work / tag, rows, concurrency=case.concurrency)
    settings = Settings(
        base_url="http://127.0.0.1/api/v1",
        api_key=emu.config.api_key,
        min_poll=2.0 / SPEED,
        max_poll=30.0 / SPEED,
        submit_rate=0.0,
        timeout=10.0,
        progress=False,
    )
    began = time.monotonic()
    with gate(gated), retrying.set_testing():
        result = await run_batch(
            load_manifest(manifest), settings, transport=httpx.ASGITransport(app=emu.app)
        )
    took = (time.monotonic() - began) * SPEED
    assert result.outcome.error is None and result.outcome.stopped is None, result.outcome
    assert sorted(emu.charges_by_key().values()) == [1] * rows
    return took


def main() -> None:
    """Print the table: each case as shipped and without the gate, in the same run."""
    print(f"scenario 6: one create at a time per technique; {RUN_SECONDS:.0f}-s runs, ", end="")
    print(f"4 x C jobs, times in FLORA seconds (speed {SPEED:g})")
    print("| create latency | C | needed creates/s | gated | free | gated / free |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            gated = asyncio.run(one_batch(Path(tmp), case, gated=True))
            free = asyncio.run(one_batch(Path(tmp), case, gated=False))
            need = case.concurrency / RUN_SECONDS
            print(
                f"| {case.latency:g} s | {case.concurrency} | {need:.2f} | {gated:.0f} s "
                f"| {free:.0f} s | {gated / free:.2f}× |",
                flush=True,
            )
    sys.exit(0)


if __name__ == "__main__":
    main()

"""``flora-batch submit`` and ``flora-batch worker``: one batch on many machines.

Thin click commands over ``cluster``; ``cli.py`` registers them (``CLUSTER_COMMANDS``).
Both need a PostgreSQL ledger that every machine reaches; on a SQLite ledger they refuse
with a clear message (one machine needs only ``flora-batch run``).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import errors as E
from ..types import cost_unit, money
from . import options as opt
from .settings import load_manifest_arg, settings_for

if TYPE_CHECKING:  # imported when a command runs: `--help` stays light
    from ..cluster import Served, Submitted, WorkerOptions
    from ..config import Settings

SUBMIT_EXAMPLES = """
\b
Examples:
  flora-batch submit spring.yaml --ledger postgresql://flora@db/flora \\
      --results /mnt/shared/spring --concurrency 16
  flora-batch submit spring.yaml --ledger postgresql://flora@db/flora \\
      --results s3://my-bucket/spring
  # then, on every machine: flora-batch worker --ledger postgresql://flora@db/flora
"""

WORKER_EXAMPLES = """
\b
Examples:
  flora-batch worker --ledger postgresql://flora@db/flora          # until SIGTERM
  flora-batch worker --ledger postgresql://flora@db/flora --exit-when-idle   # cron
  flora-batch worker --ledger postgresql://flora@db/flora --batch spring --concurrency 4
"""


def _storage_options(endpoint: str | None) -> dict[str, Any] | None:
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else None


# --- submit ---------------------------------------------------------------------------------


@click.command("submit", epilog=SUBMIT_EXAMPLES)
@click.argument("manifest", type=click.Path(path_type=Path))
@opt.LEDGER.saying(
    "The shared ledger: postgresql://... (env FLORA_LEDGER; default: the manifest's)."
)
@opt.BASE_URL
@opt.RESULTS.saying(
    "Where every worker writes outputs: a folder all machines reach at the same path, "
    "or s3://bucket/prefix (default: the manifest's output.dir)."
)
@opt.TECHNIQUE.saying("With a rows file instead of a manifest: the technique slug.")
@opt.INPUT.saying("With --technique.")
@opt.SKIP_INVALID.saying("Plan the valid rows; list the invalid ones.")
@opt.CONCURRENCY.saying("Runs in flight at most, across all workers (default: manifest, else 4).")
@opt.MAX_COST.saying("Hard cap on money the batch may spend.")
@opt.RATE.saying("Creates per second at most, across all workers (0: unpaced).")
@opt.RETRY_FAILED.saying("Plan again failed jobs FLORA calls retryable.")
@opt.RESUBMIT_UNRESOLVED.saying("Plan again jobs whose run could not be identified.")
@opt.S3_ENDPOINT
@opt.JSON.saying("Print what was recorded as JSON.")
@click.pass_context
def submit(
    ctx: click.Context,
    /,
    manifest: Path,
    results: str | None,
    technique: str | None,
    inputs: tuple[str, ...],
    as_json: bool,
    **_settings: Any,
) -> None:
    """Plan a batch into a shared PostgreSQL ledger, for workers to run.

    Returns at once.  Validates every row against the live schemas (free), records the
    jobs and what workers need without the manifest: where results go, max_cost, the
    cluster-wide concurrency and create rate, the technique schemas.  Buys nothing.
    Submitting again adds new rows and updates the batch's settings; finished jobs stay
    finished.
    """
    import asyncio

    from ..cluster import submit_batch

    m = load_manifest_arg(manifest, technique, inputs)
    settings = settings_for(ctx, manifest=m, needs_key=True)
    if results is not None and "://" not in results:
        results = str(Path(results).expanduser().absolute())
    storage = _storage_options(settings.s3_endpoint)
    done = asyncio.run(submit_batch(m, settings, results=results, storage_options=storage))
    _show_submitted(done, as_json=as_json)


def _show_submitted(done: Submitted, *, as_json: bool) -> None:
    prep = done.prepared
    data = {
        "batch": prep.manifest.name,
        "jobs": len(prep.keys),
        "new": done.new,
        "reopened": done.retried,
        "states": {s.value: n for s, n in done.counts.items() if n},
        "estimated_cost": prep.plan.total_cost,
        "max_cost": done.max_cost,
        "concurrency": done.concurrency,
        "results": done.results,
        "ledger": done.ledger_url,
        "skipped": [str(s) for s in prep.skipped],
    }
    if as_json:
        import json

        click.echo(json.dumps(data, indent=2))
        return
    unit = cost_unit(prep.techniques)
    states = ", ".join(f"{n} {s.value}" for s, n in done.counts.items() if n)
    click.echo(f"{data['batch']}: {data['jobs']} jobs, {done.new} new ({states})")
    click.echo(f"  estimated cost {money(prep.plan.total_cost, unit)}")
    click.echo(f"  results {done.results}")
    click.echo(f"  ledger  {done.ledger_url}")
    for skipped in prep.skipped[:20]:
        click.echo(f"  skipped {skipped}")
    click.echo(f"next, on each machine: flora-batch worker --ledger {done.ledger_url}")


# --- worker ---------------------------------------------------------------------------------


@click.command("worker", epilog=WORKER_EXAMPLES)
@opt.LEDGER.saying("The shared ledger: postgresql://... (env FLORA_LEDGER).")
@opt.BASE_URL
@opt.BATCH.saying("Work only this batch (default: every batch, oldest first).")
@opt.CONCURRENCY.saying("Runs this worker keeps in flight (default: the batch's cluster-wide cap).")
@opt.LEASE
@opt.EXIT_WHEN_IDLE
@opt.WORKER_ID
@opt.IDLE_POLL
@opt.MIN_POLL
@opt.MAX_POLL
@opt.MAX_RUNTIME.saying("Stop cleanly after this long.")
@opt.contract_options
@opt.S3_ENDPOINT
@click.pass_context
def worker(
    ctx: click.Context,
    /,
    batch: str | None,
    lease: float,
    exit_when_idle: bool,
    worker_id: str | None,
    idle_poll: float,
    **_settings: Any,
) -> None:
    """Work submitted batches from a shared PostgreSQL ledger (one or more per machine).

    Claims jobs (never one another worker holds), submits, polls and downloads them
    exactly as `run` does, and renews its claims every lease/3 seconds.  A worker that
    dies loses its claims after --lease seconds and the others take its jobs over, with
    the same never-pay-twice rules as a crash.  The in-flight cap, the create rate and
    429 slowdowns hold across all workers.  SIGTERM: stop claiming, hand the jobs back,
    exit 0.

    \b
    Exit codes: 0 stopped cleanly (SIGTERM/SIGINT, idle with --exit-when-idle,
    --max-runtime) · 2 usage (e.g. a SQLite ledger) · 3 stopped by FLORA (key, credits,
    outage) · 5 a `flora-batch run` holds the ledger · 7 results or ledger not writable
    """
    import asyncio

    from ..cluster import WorkerOptions, new_worker_id

    settings = settings_for(ctx, needs_key=True)
    options = WorkerOptions(
        worker_id=worker_id or new_worker_id(),
        lease=lease,
        concurrency=settings.concurrency,
        batch=batch,
        exit_when_idle=exit_when_idle,
        idle_poll=idle_poll,
        storage_options=_storage_options(settings.s3_endpoint),
    )
    served = asyncio.run(_serve_with_signals(settings, options))
    click.echo(
        f"worker {served.worker_id}: {served.done} jobs done in {served.rounds} round(s); "
        f"stopped: {served.stopped}"
    )
    if served.error is not None:
        click.echo(f"error: {served.error}", err=True)
    sys.exit(_worker_exit(served))


async def _serve_with_signals(settings: Settings, options: WorkerOptions) -> Served:
    import asyncio

    from ..cluster import Stopper, serve

    loop = asyncio.get_running_loop()
    stopper = Stopper()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopper)
    try:
        return await serve(settings, options, stopper=stopper)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _worker_exit(served: Served) -> int:
    if served.stopped in ("auth", "credits", "outage"):
        return E.EXIT_STOPPED_BY_API
    if served.error is not None:
        return served.error.exit_code
    return E.EXIT_OK


CLUSTER_COMMANDS = (submit, worker)

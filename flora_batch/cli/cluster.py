"""``flora-batch submit`` and ``flora-batch worker``: one batch on many machines.

Thin click commands over ``cluster``; ``cli.py`` registers them (``CLUSTER_COMMANDS``).
Both need a PostgreSQL ledger that every machine reaches; on a SQLite ledger they refuse
with a clear message (one machine needs only ``flora-batch run``).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import click

from .. import errors as E
from ..cluster import (
    DEFAULT_IDLE_POLL,
    DEFAULT_LEASE,
    Served,
    Stopper,
    Submitted,
    WorkerOptions,
    new_worker_id,
    serve,
    submit_batch,
)
from ..config import DEFAULT_MAX_POLL, DEFAULT_MIN_POLL, DEFAULT_SUBMIT_RATE, Settings
from ..types import cost_unit, money
from ..wire import DEFAULT_BASE_URL
from .options import contract_options, load_manifest_arg, settings_from

S3_ENDPOINT_ENV = "FLORA_BATCH_S3_ENDPOINT"

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


def _base_url(fn: Any) -> Any:
    return click.option(
        "--base-url",
        envvar="FLORA_BASE_URL",
        default=DEFAULT_BASE_URL,
        show_default=True,
        help="FLORA API base URL (env FLORA_BASE_URL).",
    )(fn)


def _s3_endpoint(fn: Any) -> Any:
    return click.option(
        "--s3-endpoint",
        envvar=S3_ENDPOINT_ENV,
        metavar="URL",
        help=f"S3-compatible endpoint for s3:// results (env {S3_ENDPOINT_ENV}).",
    )(fn)


def _storage_options(endpoint: str | None) -> dict[str, Any] | None:
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else None


def _api_key() -> str | None:
    obj = click.get_current_context().find_root().obj or {}
    key: str | None = obj.get("api_key")
    return key


# --- submit ---------------------------------------------------------------------------------


@click.command("submit", epilog=SUBMIT_EXAMPLES)
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option(
    "--ledger",
    envvar="FLORA_LEDGER",
    help="The shared ledger: postgresql://... (env FLORA_LEDGER; default: the manifest's).",
)
@_base_url
@click.option(
    "--results",
    help="Where every worker writes outputs: a folder all machines reach at the same path, "
    "or s3://bucket/prefix (default: the manifest's output.dir).",
)
@click.option("--technique", help="With a rows file instead of a manifest: the technique slug.")
@click.option("--input", "inputs", multiple=True, metavar="ID=COLUMN", help="With --technique.")
@click.option("--skip-invalid", is_flag=True, help="Plan the valid rows; list the invalid ones.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    help="Runs in flight at most, across all workers (default: manifest, else 4).",
)
@click.option(
    "--max-cost", type=click.FloatRange(min=0), help="Hard cap on money the batch may spend."
)
@click.option(
    "--rate",
    "submit_rate",
    type=click.FloatRange(min=0),
    default=DEFAULT_SUBMIT_RATE,
    show_default=True,
    help="Creates per second at most, across all workers (0: unpaced).",
)
@click.option("--retry-failed", is_flag=True, help="Plan again failed jobs FLORA calls retryable.")
@click.option(
    "--resubmit-unresolved", is_flag=True, help="Plan again jobs whose run could not be identified."
)
@_s3_endpoint
@click.option("--json", "as_json", is_flag=True, help="Print what was recorded as JSON.")
def submit(
    manifest: Path,
    ledger: str | None,
    base_url: str,
    results: str | None,
    technique: str | None,
    inputs: tuple[str, ...],
    skip_invalid: bool,
    concurrency: int | None,
    max_cost: float | None,
    submit_rate: float,
    retry_failed: bool,
    resubmit_unresolved: bool,
    s3_endpoint: str | None,
    as_json: bool,
) -> None:
    """Plan a batch into a shared PostgreSQL ledger, for workers to run.

    Returns at once.  Validates every row against the live schemas (free), records the
    jobs and what workers need without the manifest: where results go, max_cost, the
    cluster-wide concurrency and create rate, the technique schemas.  Buys nothing.
    Submitting again adds new rows and updates the batch's settings; finished jobs stay
    finished.
    """

    m = load_manifest_arg(manifest, technique, inputs)
    settings = settings_from(
        base_url,
        _api_key(),
        ledger=ledger,
        concurrency=concurrency,
        max_cost=max_cost,
        submit_rate=submit_rate,
        retry_failed=retry_failed,
        resubmit_unresolved=resubmit_unresolved,
        skip_invalid=skip_invalid,
    )
    if results is not None and "://" not in results:
        results = str(Path(results).expanduser().absolute())
    done = asyncio.run(
        submit_batch(m, settings, results=results, storage_options=_storage_options(s3_endpoint))
    )
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
@click.option(
    "--ledger",
    envvar="FLORA_LEDGER",
    help="The shared ledger: postgresql://... (env FLORA_LEDGER).",
)
@_base_url
@click.option("--batch", help="Work only this batch (default: every batch, oldest first).")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    help="Runs this worker keeps in flight (default: the batch's cluster-wide cap).",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=1),
    default=DEFAULT_LEASE,
    show_default=True,
    metavar="SECONDS",
    help="How long a claim lasts without a heartbeat; a dead worker's jobs wait this long.",
)
@click.option(
    "--exit-when-idle", is_flag=True, help="Exit when there is nothing to claim (cron fleets)."
)
@click.option("--worker-id", help="Name shown in status (default: host-pid-random).")
@click.option(
    "--idle-poll",
    type=click.FloatRange(min=0.05),
    default=DEFAULT_IDLE_POLL,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between looks for work while there is none.",
)
@click.option(
    "--min-poll",
    type=float,
    default=DEFAULT_MIN_POLL,
    show_default=True,
    help="Seconds between polls of one run at the least.",
)
@click.option(
    "--max-poll",
    type=float,
    default=DEFAULT_MAX_POLL,
    show_default=True,
    help="Seconds between polls at the most (and before a stuck job is tried again).",
)
@click.option("--max-runtime", type=float, metavar="SECONDS", help="Stop cleanly after this long.")
@contract_options
@_s3_endpoint
def worker(
    ledger: str | None,
    base_url: str,
    batch: str | None,
    concurrency: int | None,
    lease: float,
    exit_when_idle: bool,
    worker_id: str | None,
    idle_poll: float,
    min_poll: float,
    max_poll: float,
    max_runtime: float | None,
    timeout: float,
    key_window: float,
    history_lag: float,
    s3_endpoint: str | None,
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

    settings = settings_from(
        base_url,
        _api_key(),
        ledger=ledger,
        min_poll=min_poll,
        max_poll=max_poll,
        max_runtime=max_runtime,
        timeout=timeout,
        key_window=key_window,
        history_lag=history_lag,
    )
    options = WorkerOptions(
        worker_id=worker_id or new_worker_id(),
        lease=lease,
        concurrency=concurrency,
        batch=batch,
        exit_when_idle=exit_when_idle,
        idle_poll=idle_poll,
        storage_options=_storage_options(s3_endpoint),
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

"""The ``flora-batch`` command: a thin click shell over ``pipeline``.

Each command builds ``Settings``, calls one library function and renders the result.
One handler (``main``) turns every FloraError into a message and its exit code; a user
mistake never shows a traceback (``-v`` shows the causes, never the API key).

Exit codes: 0 every job done · 1 finished with failed jobs · 2 bad manifest or usage
(nothing spent) · 3 stopped by the API (auth, credits, outage) · 4 budget cap reached ·
5 another run holds this ledger · 6 jobs need reconciling by you · 7 the results folder
or the ledger cannot be used (disk full, permissions, a file in the way) · 130
interrupted (run the same command again to continue).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .. import errors as E
from ..config import DEFAULT_TIMEOUT, Settings, check_workspace_id
from ..pipeline import BatchResult, plan_batch, run_batch
from ..remote.client import http_stack
from ..types import JobState, cost_unit, money
from ..wire import DEFAULT_BASE_URL
from .options import contract_options, load_manifest_arg, settings_from
from .progress import Progress, duration

#: ``--demo``'s request timeout (the embedded emulator is on loopback), unless one is given.
DEMO_TIMEOUT = 5.0
log = logging.getLogger("flora_batch")

RUN_EXAMPLES = """
\b
Examples:
  flora-batch run manifests/demo.yaml --demo      # no key, no network: a local FLORA
  FLORA_API_KEY=sk_live_... flora-batch run spring.yaml
  flora-batch run products.csv --technique studio-shot --input product=image_url
  flora-batch run spring.yaml --retry-failed      # retry failures FLORA calls retryable
"""


def _setup_logging(verbose: int, quiet: bool, fmt: str) -> None:
    level = (
        logging.WARNING
        if quiet
        else (logging.INFO if verbose == 1 else logging.DEBUG if verbose > 1 else logging.WARNING)
    )
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("flora_batch")
    root.handlers[:] = [handler]
    root.setLevel(level)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": record.created,
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


class _Commands(click.Group):
    """The command group; ``emulator`` is imported only when it is asked for.

    The emulator is a whole web app (a tenth of a second to import) that no other
    command needs: every ``status``, ``plan`` and ``run`` started that much later.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "emulator"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "emulator" and cmd_name not in self.commands:
            from ..emulator.serve import emulator_command

            self.add_command(emulator_command, name="emulator")
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("-v", "--verbose", count=True, help="More detail (-vv for debugging).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings, errors and the summary.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per log line (cron, log shippers).",
)
@click.version_option(package_name="flora-batch")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, log_format: str) -> None:
    """Push spreadsheet rows through FLORA techniques, resumably, never paying twice.

    \b
    Start here:
      flora-batch run manifests/demo.yaml --demo    a whole batch against a local FLORA
      flora-batch run --help                        the manifest, flags and exit codes
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    ctx.obj["quiet"] = quiet
    _setup_logging(verbose, quiet, log_format)
    http_stack()  # a bad FLORA_BATCH_HTTP stops here, before any ledger is created
    apply_config(ctx)  # ~/.config/flora-batch/config.toml: below flags and environment


def _common_run_options(fn: Any) -> Any:
    options = [
        click.option(
            "--base-url",
            envvar="FLORA_BASE_URL",
            default=DEFAULT_BASE_URL,
            show_default=True,
            help="FLORA API base URL (env FLORA_BASE_URL).",
        ),
        click.option(
            "--ledger",
            envvar="FLORA_LEDGER",
            help="Ledger: a SQLite file path or a SQLAlchemy URL "
            "(env FLORA_LEDGER; default: <name>.ledger.db beside the manifest).",
        ),
        click.option(
            "--results",
            type=click.Path(path_type=Path),
            help="Results folder (default: the manifest's output.dir).",
        ),
        click.option(
            "--technique",
            help="With a CSV/XLSX/JSONL/Parquet instead of a manifest: the technique slug.",
        ),
        click.option(
            "--input",
            "inputs",
            multiple=True,
            metavar="ID=COLUMN",
            help="With a rows file: map a technique input to a column (or a {template}).",
        ),
        click.option(
            "--skip-invalid", is_flag=True, help="Run the valid rows; list the invalid ones."
        ),
        click.option(
            "--demo", is_flag=True, help="Run against a local FLORA emulator (no key, no network)."
        ),
        click.option(
            "--workspace-id",
            envvar="FLORA_WORKSPACE_ID",
            help="Workspace (ws_…) that local input files are uploaded to "
            "(env FLORA_WORKSPACE_ID; default: the manifest's assets.workspace_id).",
        ),
        click.option(
            "--asset-folder",
            envvar="FLORA_ASSET_FOLDER",
            help="Workspace library folder for uploaded files (default: assets.folder).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@contextmanager
def _demo_server(enabled: bool, speed: float = 30.0, state_file: Path | None = None) -> Any:
    """The embedded emulator for --demo: a real HTTP server on a loopback port.

    With ``state_file`` it keeps its state there, so runs it made outlive this process
    and a re-run after Ctrl-C or ``kill -9`` finds them (``_demo_state_file``).
    """
    if not enabled:
        yield None
        return
    from ..emulator import EmulatorConfig
    from ..emulator.serve import start_server

    config = EmulatorConfig(speed=speed, state_file=state_file)
    handle = start_server(config, host="127.0.0.1", port=0)
    try:
        yield handle
    finally:
        handle.stop()


def _demo_state_file(m: Any, ledger: str | None) -> Path:
    """Where ``run --demo``'s emulator keeps its state: ``<ledger>.demo-emulator.json``
    beside a SQLite ledger file, else ``<batch>.demo-emulator.json`` beside the manifest."""
    from ..ledger.connect import resolve
    from ..locations import ledger_location

    path = resolve(ledger_location(m, Settings(ledger=ledger))).sqlite_path
    if path is None:
        return Path(m.path).parent / f"{m.name}.demo-emulator.json"
    return path.with_name(f"{path.name}.demo-emulator.json")


def _assets(workspace_id: str | None, folder: str | None, m: Any, server: Any) -> dict[str, Any]:
    """Where input files go: --demo's emulator workspace; else the flag or environment,
    then the manifest's ``assets:``, then the config file (below the manifest)."""
    ctx = click.get_current_context()
    from_file = click.core.ParameterSource.DEFAULT_MAP
    if ctx.get_parameter_source("workspace_id") is from_file:
        workspace_id = m.workspace_id or workspace_id
    if ctx.get_parameter_source("asset_folder") is from_file:
        folder = m.asset_folder or folder
    if server is not None:
        workspace_id = server.emulator.config.workspace_id
    return {"workspace_id": check_workspace_id(workspace_id), "asset_folder": folder}


@cli.command(epilog=RUN_EXAMPLES)
@click.argument("manifest", type=click.Path(path_type=Path))
@_common_run_options
@contract_options
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    help="Runs in flight at most (default: manifest, else 4).",
)
@click.option(
    "--max-cost", type=click.FloatRange(min=0), help="Hard cap on money this batch may spend."
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Buy again the failed jobs FLORA calls retryable (new keys).",
)
@click.option(
    "--resubmit-unresolved",
    is_flag=True,
    help="Buy again jobs whose first run could not be identified (may pay twice: check first).",
)
@click.option(
    "--max-runtime", type=float, metavar="SECONDS", help="Stop cleanly after this long (cron)."
)
@click.option(
    "--min-poll",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds between polls of one run at the least.",
)
@click.option(
    "--rate",
    "submit_rate",
    type=float,
    default=5.0,
    show_default=True,
    help="Creates per second at most (0: unpaced).",
)
@click.option(
    "--verify", "verify_deep", is_flag=True, help="Re-hash every finished output on disk."
)
@click.option(
    "--max-download-mb",
    type=click.IntRange(min=1),
    metavar="MIB",
    help="Refuse any output file larger than this many MiB (default: 2048).",
)
@click.pass_context
def run(
    ctx: click.Context,
    manifest: Path,
    base_url: str,
    ledger: str | None,
    results: Path | None,
    technique: str | None,
    inputs: tuple[str, ...],
    skip_invalid: bool,
    demo: bool,
    workspace_id: str | None,
    asset_folder: str | None,
    concurrency: int | None,
    max_cost: float | None,
    retry_failed: bool,
    resubmit_unresolved: bool,
    max_runtime: float | None,
    min_poll: float,
    submit_rate: float,
    verify_deep: bool,
    max_download_mb: int | None,
    timeout: float,
    key_window: float,
    history_lag: float,
) -> None:
    """Run a batch: validate every row, then submit, poll and download — resumably.

    MANIFEST is a YAML manifest (see docs/manifest.md) or a rows file with --technique.
    Every row is checked against the technique's schema before anything is paid for.
    Run the same command again after any interruption: finished jobs are skipped,
    runs in flight are polled, and nothing is bought twice.

    \b
    Exit codes: 0 all done · 1 some jobs failed · 2 bad manifest/usage (nothing spent)
    3 stopped by FLORA (key, credits, outage) · 4 max_cost reached · 5 ledger busy
    6 jobs need you to reconcile · 7 results folder or ledger not writable (disk full?)
    130 interrupted (run it again to continue)
    """
    m = load_manifest_arg(manifest, technique, inputs)
    quiet = ctx.obj.get("quiet", False)
    state_file = _demo_state_file(m, ledger) if demo else None
    with _demo_server(demo, state_file=state_file) as server:
        key = server.api_key if server else click.get_current_context().obj.get("api_key")
        settings = settings_from(
            server.base_url if server else base_url,
            key,
            ledger=ledger,
            results=results,
            concurrency=concurrency,
            max_cost=max_cost,
            retry_failed=retry_failed,
            resubmit_unresolved=resubmit_unresolved,
            skip_invalid=skip_invalid,
            max_runtime=max_runtime,
            min_poll=min_poll,
            submit_rate=submit_rate,
            verify_deep=verify_deep,
            max_download_bytes=max_download_mb * 1024 * 1024 if max_download_mb else None,
            # The embedded emulator answers in milliseconds: a create cut off by Ctrl-C or
            # kill is waited out for seconds, not a minute, before it is sent again.
            timeout=DEMO_TIMEOUT if server and timeout == DEFAULT_TIMEOUT else timeout,
            key_window=key_window,
            history_lag=history_lag,
            **_assets(workspace_id, asset_folder, m, server),
        )
        progress = Progress(m.name, enabled=not quiet)
        result = asyncio.run(_run_with_signals(m, settings, progress))
        progress.close()
    _summarise(result, demo=demo)
    sys.exit(_exit_code(result))


async def _run_with_signals(m: Any, settings: Settings, progress: Progress) -> BatchResult:
    loop = asyncio.get_running_loop()

    def hook(worker: Any) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop_event.set)

    try:
        return await run_batch(m, settings, progress=progress, on_worker=hook)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _exit_code(result: BatchResult) -> int:
    out = result.outcome
    if out.stopped in ("interrupted", "runtime"):
        return E.EXIT_INTERRUPTED
    if out.stopped in ("auth", "credits", "outage"):
        return E.EXIT_STOPPED_BY_API
    if out.error is not None:
        return out.error.exit_code
    if out.stopped == "budget" and out.counts[JobState.PLANNED]:
        return E.EXIT_BUDGET
    if result.unresolved or out.counts[JobState.NEEDS_RECONCILE] or _unsettled(result):
        return E.EXIT_UNRESOLVED
    if result.failed or out.stuck:
        return E.EXIT_FAILED_JOBS
    return E.EXIT_OK


def _unsettled(result: BatchResult) -> bool:
    """A superseded job whose run nobody can identify: money only you can settle."""
    waiting = (JobState.UNRESOLVED, JobState.NEEDS_RECONCILE)
    return any(r.state in waiting for r in result.superseded)


def _summarise(result: BatchResult, *, demo: bool) -> None:
    out = result.outcome
    c = out.counts
    prep = result.prepared
    unit = cost_unit(prep.techniques)
    total = sum(c.values())
    click.echo(
        f"\n{prep.manifest.name}: {c[JobState.DONE]} of {total} jobs done"
        + (f", {c[JobState.FAILED]} failed" if c[JobState.FAILED] else "")
        + (f", {len(result.unresolved)} unresolved" if result.unresolved else "")
        + (f", {c[JobState.PLANNED]} not started" if c[JobState.PLANNED] else "")
    )
    click.echo(
        f"  spent   {money(out.spent, unit)}"
        + (f" (+{money(out.reserved, unit)} not yet settled)" if out.reserved > 0.005 else "")
    )
    click.echo(f"  results {result.results_dir}")
    click.echo(f"  ledger  {result.ledger_url}")
    for rec in result.failed[:10]:
        click.echo(f"  failed  {rec.source or rec.key}: {rec.error_code} {rec.error_message or ''}")
    for rec in result.unresolved[:10]:
        click.echo(
            f"  UNRESOLVED {rec.source or rec.key} ({rec.technique}): {rec.error_message or ''}"
        )
    for line in out.stuck[:10]:
        click.echo(f"  waiting {line}")
    for note in out.notes:
        click.echo(f"  NOTE    {note}")
    for skipped in prep.skipped[:20]:
        click.echo(f"  skipped {skipped}")
    for line in upload_lines(result.uploads) if result.uploads is not None else ():
        click.echo(line)
    for line in superseded_lines(result.superseded, result.results_dir):
        click.echo(line)
    hint = _stop_hint(out.stopped, out.error)
    if hint:
        click.echo(hint, err=True)
    if demo:
        click.echo("  (demo: a local FLORA emulator made these files; its bill is pretend money)")


def _stop_hint(stopped: str | None, error: E.FloraError | None) -> str | None:
    hints = {
        "budget": "Stopped at the budget cap (max_cost): raise it, then run the same command.",
        "credits": "FLORA is out of credits: top up, then run the same command to continue.",
        "auth": f"FLORA refused the API key: {error}",
        "interrupted": "Interrupted: run the same command again to continue where it stopped.",
        "runtime": "Reached --max-runtime: run the same command again to continue.",
        "outage": "FLORA did not answer for too long: run the same command later to continue.",
    }
    if stopped in hints:
        return hints[stopped]
    return f"Stopped: {error}" if error else None


@cli.command(epilog="\b\nExample:\n  flora-batch plan manifests/demo.yaml --demo")
@click.argument("manifest", type=click.Path(path_type=Path))
@_common_run_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(
    manifest: Path,
    base_url: str,
    ledger: str | None,
    results: Path | None,
    technique: str | None,
    inputs: tuple[str, ...],
    skip_invalid: bool,
    demo: bool,
    workspace_id: str | None,
    asset_folder: str | None,
    as_json: bool,
) -> None:
    """Dry run: validate, count new / done / in-flight / failed / changed jobs, estimate cost.

    Reads technique schemas (free) and the ledger; buys nothing.  Exit codes match `run`.
    """
    m = load_manifest_arg(manifest, technique, inputs)
    with _demo_server(demo) as server:
        key = server.api_key if server else click.get_current_context().obj.get("api_key")
        settings = settings_from(
            server.base_url if server else base_url,
            key,
            ledger=ledger,
            results=results,
            skip_invalid=skip_invalid,
            **_assets(workspace_id, asset_folder, m, server),
        )
        try:
            prepared, ledger_url = asyncio.run(plan_batch(m, settings))
        except E.ManifestProblems as exc:
            if not as_json:
                raise
            problems = [str(problem) for problem in exc.problems]
            click.echo(json.dumps({"batch": m.name, "problems": problems}, indent=2))
            sys.exit(exc.exit_code)
    p = prepared.plan
    unit = cost_unit(prepared.techniques)
    spent, reserved = committed(ledger_url, m.name)
    data = {
        "batch": m.name,
        "jobs": len(p.keys),
        "new": len(p.new),
        "done": len(p.done),
        "in_flight": len(p.in_flight),
        "failed": len(p.failed),
        "unresolved": len(p.unresolved),
        "changed": len(p.changed),
        "retired": len(p.retired),
        "superseded_in_flight": len(p.superseded),
        "cost_by_technique": p.cost_by_technique,
        "estimated_cost": p.total_cost,
        "spent": spent,
        "reserved": reserved,
        "max_cost": m.max_cost,
        "results": str(settings.results or m.output_dir),
        "ledger": ledger_url,
        "skipped": [str(s) for s in prepared.skipped],
        "uploads": prepared.upload_summary.as_dict() if prepared.upload_summary else None,
    }
    over = m.max_cost is not None and spent + reserved + p.total_cost > m.max_cost + 1e-9
    if as_json:
        click.echo(json.dumps({**data, "over_budget": over}, indent=2))
    else:
        click.echo("\n".join(plan_lines(data, unit, skipped=prepared.skipped, over=over)))
    sys.exit(E.EXIT_BUDGET if over else E.EXIT_OK)


# The operator's toolbox (techniques, init, status, report) and plan's helpers.
from .toolbox import (  # noqa: E402
    COMMANDS,
    apply_config,
    committed,
    plan_lines,
    superseded_lines,
    upload_lines,
)

for _command in COMMANDS:
    cli.add_command(_command)

# One batch on many machines: submit to a shared PostgreSQL ledger, then `worker` on each.
from .cluster import CLUSTER_COMMANDS  # noqa: E402

for _command in CLUSTER_COMMANDS:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every FloraError into a message and an exit code."""
    try:
        cli.main(args=argv, prog_name="flora-batch", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Interrupted.", err=True)
        sys.exit(E.EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(E.EXIT_USAGE)
    except E.FloraError as exc:
        _report_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("\nInterrupted: run the same command again to continue.", err=True)
        sys.exit(E.EXIT_INTERRUPTED)


def _report_error(exc: E.FloraError) -> None:
    if isinstance(exc, E.ManifestError):  # one or several: each as file:line[:column]
        problems = exc.problems if isinstance(exc, E.ManifestProblems) else [exc]
        for problem in problems:
            click.echo(str(problem), err=True)
        click.echo(f"{len(problems)} problem(s); nothing was submitted.", err=True)
        return
    click.echo(f"error: {exc}", err=True)
    if logging.getLogger("flora_batch").isEnabledFor(logging.DEBUG):
        cause = exc.__cause__
        while cause is not None:
            click.echo(f"  caused by: {type(cause).__name__}: {cause}", err=True)
            cause = cause.__cause__


__all__ = ["cli", "duration", "main"]

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

import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import click

from .. import errors as E
from .._version import __version__
from ..types import JobState, cost_unit, money
from . import options as opt
from .progress import Progress, duration
from .settings import flora, load_manifest_arg

if TYPE_CHECKING:  # imported when a command runs: `--help` stays light (docs/performance.md)
    from ..config import Settings
    from ..manifest import Manifest
    from ..pipeline import BatchResult

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
    """The command group; ``emulator`` is imported only when it is run or its help shown.

    The emulator is a whole web app (a tenth of a second to import) that no other
    command needs: every ``status``, ``plan`` and ``run`` started that much later, and
    ``flora-batch --help`` lists it by its one-line help alone (``LAZY``).
    """

    #: Commands imported on first use, with the one line ``--help`` lists them by.
    LAZY: ClassVar[dict[str, str]] = {"emulator": "Run a local FLORA API emulator until Ctrl-C."}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "emulator" and cmd_name not in self.commands:
            from ..emulator.serve import emulator_command

            self.add_command(emulator_command, name="emulator")
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's own listing, but a lazy command by its line in ``LAZY``, not imported."""
        names = [n for n in self.list_commands(ctx) if n in self.LAZY or n in self.commands]
        shown = [n for n in names if n not in self.commands or not self.commands[n].hidden]
        if not shown:
            return
        limit = formatter.width - 6 - max(len(name) for name in shown)
        rows = [
            (n, self.commands[n].get_short_help_str(limit) if n in self.commands else self.LAZY[n])
            for n in shown
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@opt.VERBOSE
@opt.QUIET
@opt.LOG_FORMAT
@click.version_option(version=__version__, prog_name="flora-batch")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, log_format: str) -> None:
    """Push spreadsheet rows through FLORA techniques, resumably, never paying twice.

    \b
    Start here:
      flora-batch techniques --demo          what FLORA can do, from a local FLORA emulator
      flora-batch init studio-shot --demo    a manifest and a CSV to fill in, for a technique
      flora-batch run --help                 the manifest, flags and exit codes
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    ctx.obj["quiet"] = quiet
    _setup_logging(verbose, quiet, log_format)


def _batch_options(fn: Any) -> Any:
    """The options of every command that reads a batch's rows: ``run`` and ``plan``."""
    for option in reversed(
        (
            opt.BASE_URL,
            opt.LEDGER,
            opt.RESULTS,
            opt.TECHNIQUE,
            opt.INPUT,
            opt.SKIP_INVALID,
            opt.DEMO,
            opt.WORKSPACE_ID,
            opt.ASSET_FOLDER,
        )
    ):
        fn = option(fn)
    return fn


@cli.command(epilog=RUN_EXAMPLES)
@click.argument("manifest", type=click.Path(path_type=Path))
@_batch_options
@opt.contract_options
@opt.CONCURRENCY
@opt.MAX_COST
@opt.RETRY_FAILED
@opt.RESUBMIT_UNRESOLVED
@opt.MAX_RUNTIME
@opt.MIN_POLL
@opt.RATE
@opt.VERIFY
@opt.MAX_DOWNLOAD_MB
@click.pass_context
def run(
    ctx: click.Context,
    /,
    manifest: Path,
    technique: str | None,
    inputs: tuple[str, ...],
    demo: bool,
    **_settings: Any,
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
    import asyncio

    m = load_manifest_arg(manifest, technique, inputs)
    with flora(ctx, m, demo=demo, keep_state=True) as settings:
        progress = Progress(m.name, enabled=not ctx.obj.get("quiet", False))
        result = asyncio.run(_run_with_signals(m, settings, progress))
        progress.close()
    _summarise(result, demo=demo)
    sys.exit(_exit_code(result))


async def _run_with_signals(m: Manifest, settings: Settings, progress: Progress) -> BatchResult:
    import asyncio

    from ..pipeline import run_batch

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
@_batch_options
@opt.JSON.saying("Print the plan as JSON.")
@click.pass_context
def plan(
    ctx: click.Context,
    /,
    manifest: Path,
    technique: str | None,
    inputs: tuple[str, ...],
    demo: bool,
    as_json: bool,
    **_settings: Any,
) -> None:
    """Dry run: validate, count new / done / in-flight / failed / changed jobs, estimate cost.

    Reads technique schemas (free) and the ledger; buys nothing.  Exit codes match `run`.
    """
    import asyncio

    from ..pipeline import plan_batch

    m = load_manifest_arg(manifest, technique, inputs)
    with flora(ctx, m, demo=demo) as settings:
        try:
            prepared, ledger_url = asyncio.run(plan_batch(m, settings))
        except E.ManifestProblems as exc:
            if not as_json:
                raise
            problems = [str(problem) for problem in exc.problems]
            click.echo(json.dumps({"batch": m.name, "problems": problems}, indent=2))
            sys.exit(exc.exit_code)
    data = _plan_data(prepared, ledger_url, settings)
    total = data["spent"] + data["reserved"] + data["estimated_cost"]
    over = m.max_cost is not None and total > m.max_cost + 1e-9
    if as_json:
        click.echo(json.dumps({**data, "over_budget": over}, indent=2))
    else:
        unit = cost_unit(prepared.techniques)
        click.echo("\n".join(plan_lines(data, unit, skipped=prepared.skipped, over=over)))
    sys.exit(E.EXIT_BUDGET if over else E.EXIT_OK)


def _plan_data(prepared: Any, ledger_url: str, settings: Settings) -> dict[str, Any]:
    """``plan``'s figures, as ``--json`` prints them (less ``over_budget``)."""
    m, p = prepared.manifest, prepared.plan
    spent, reserved = committed(ledger_url, m.name)
    return {
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


# The operator's toolbox (techniques, init, status, report) and plan's helpers.
from .toolbox import (  # noqa: E402
    COMMANDS,
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

"""The operator's toolbox: ``techniques``, ``init``, ``status`` and ``report``.

Thin click commands over ``techniques``, ``scaffold``, ``status`` and ``report``;
``main`` registers them (``COMMANDS``).  Each takes its ``Settings`` from
``settings.settings_for`` (or ``settings.flora`` to ask FLORA).  They read the
pipeline's own ledger (``locations.ledger_location``), never a copy of it, and none of
them pays for anything.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .. import errors as E
from ..types import JobRecord, JobState, money
from . import options as opt
from .settings import flora, parsed, settings_for

if TYPE_CHECKING:  # imported when a command runs: `--help` stays light
    from ..config import Settings
    from ..ledger import Ledger
    from ..manifest import Manifest
    from ..remote.client import FloraClient
    from ..report import status as st
    from ..types import Technique

T = TypeVar("T")


# --- talking to FLORA (or the embedded emulator) -------------------------------------------


def _ask(ctx: click.Context, call: Callable[[FloraClient], Awaitable[T]]) -> T:
    """Run one free request against FLORA (or ``--demo``'s emulator)."""
    import asyncio

    from ..remote.client import FloraClient

    async def go(url: str, key: str) -> T:
        async with FloraClient(url, key) as client:
            return await call(client)

    with flora(ctx, demo=parsed(ctx).values["demo"]) as settings:
        return asyncio.run(go(settings.base_url, settings.api_key))


def _technique(ctx: click.Context, slug: str) -> Technique:
    """One technique's schema; an unknown slug is a usage error with a suggestion."""
    try:
        return _ask(ctx, lambda c: c.get_technique(slug))
    except E.NotFound:
        import difflib

        from .techniques import seed_techniques

        close = difflib.get_close_matches(slug, [t.slug for t in seed_techniques()], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " (see `flora-batch techniques`)"
        raise E.UsageError(f"FLORA has no technique {slug!r}{hint}") from None


def _remote_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--base-url``, ``--demo`` and ``--json``: the commands that ask FLORA something."""
    fn = opt.JSON(fn)
    fn = opt.DEMO.saying("Ask an embedded FLORA emulator (no key, no network).")(fn)
    with_url: Callable[..., Any] = opt.BASE_URL(fn)
    return with_url


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


# --- techniques ----------------------------------------------------------------------------

TECHNIQUES_EXAMPLES = """
\b
Examples:
  flora-batch techniques --demo                   # the list, from a local emulator
  flora-batch techniques show studio-shot --demo  # inputs, outputs, cost per run
  flora-batch techniques --json | jq -r '.techniques[].slug'
"""


@click.group("techniques", invoke_without_command=True, epilog=TECHNIQUES_EXAMPLES)
@_remote_options
@click.pass_context
def techniques(ctx: click.Context, /, as_json: bool, **_settings: Any) -> None:
    """List the techniques FLORA offers, with their cost per run.

    Uses FLORA's list endpoint; if it answers 404, lists the 38 techniques of FLORA's
    seed document (without costs).  `techniques show SLUG` gives one technique's inputs.
    """
    from .techniques import list_lines, list_techniques

    if ctx.invoked_subcommand is not None:
        return
    items, from_seed = _ask(ctx, list_techniques)
    if as_json:
        _echo_json(
            {"source": "seed" if from_seed else "api", "techniques": [t.as_dict() for t in items]}
        )
    else:
        click.echo("\n".join(list_lines(items, from_seed=from_seed)))


@techniques.command(
    "show",
    epilog="\b\nExamples:\n  flora-batch techniques show studio-shot --demo\n"
    "  flora-batch techniques show product-motion --json",
)
@click.argument("slug")
@_remote_options
@click.pass_context
def techniques_show(ctx: click.Context, /, slug: str, **_settings: Any) -> None:
    """Show one technique: each input (type, required, constraints), outputs, cost per run."""
    from .techniques import show_lines, technique_dict

    technique = _technique(ctx, slug)
    if parsed(ctx).values["as_json"]:  # ``techniques --json show ...`` too
        _echo_json(technique_dict(technique))
    else:
        click.echo("\n".join(show_lines(technique)))


# --- init ----------------------------------------------------------------------------------

INIT_EXAMPLES = """
\b
Examples:
  flora-batch init studio-shot --demo             # studio-shot.yaml + studio-shot.csv here
  flora-batch init product-motion --rows shoes.csv --dir spring/
  # fill in the CSV, then: flora-batch plan studio-shot.yaml
"""


@click.command("init", epilog=INIT_EXAMPLES)
@click.argument("slug")
@opt.ROWS
@opt.DIR
@_remote_options
@click.pass_context
def init(
    ctx: click.Context,
    /,
    slug: str,
    rows_name: str | None,
    folder: Path,
    as_json: bool,
    **_settings: Any,
) -> None:
    """Write a ready-to-edit manifest and a CSV template for a technique.

    The CSV's columns are the technique's inputs; the manifest maps each input to its
    column and explains it (type, required or optional, aspect ratio, media hosts).
    Existing files are never overwritten.
    """
    from . import scaffold

    rows = folder / (rows_name or f"{scaffold.batch_name(slug)}.csv")
    manifest = folder / f"{scaffold.batch_name(slug)}.yaml"
    if rows.suffix.lower() != ".csv":
        raise E.UsageError(f"--rows {rows_name}: the template is a CSV file (name it *.csv)")
    _refuse_existing(manifest, rows)
    technique = _technique(ctx, slug)
    folder.mkdir(parents=True, exist_ok=True)
    rows_ref = Path(os.path.relpath(rows.absolute(), folder.absolute())).as_posix()
    _create(rows, scaffold.csv_header(technique))
    _create(manifest, scaffold.manifest_text(technique, rows_ref))
    data = {
        "manifest": str(manifest),
        "rows": str(rows),
        "columns": scaffold.columns(technique),
        "unsendable_required": scaffold.unsendable_required(technique),
    }
    if as_json:
        _echo_json(data)
        return
    click.echo(f"wrote {manifest} and {rows} (columns: {', '.join(data['columns'])})")
    for input_id in data["unsendable_required"]:
        click.echo(f"  warning: required input {input_id!r} cannot be sent by the API", err=True)
    click.echo(f"next: add one row per run to {rows}, then `flora-batch plan {manifest}`")


def _refuse_existing(*paths: Path) -> None:
    found = [str(p) for p in paths if p.exists()]
    if found:
        raise E.UsageError(f"refusing to overwrite {' and '.join(found)}; nothing was written")


def _create(path: Path, text: str) -> None:
    try:
        with path.open("x", encoding="utf-8", newline="") as fh:
            fh.write(text)
    except FileExistsError:
        raise E.UsageError(f"refusing to overwrite {path}") from None


# --- plan (the command is in cli.py) ----------------------------------------------------


def plan_lines(data: dict[str, Any], unit: str, *, skipped: list[Any], over: bool) -> list[str]:
    """``flora-batch plan``'s text: counts, cost against max_cost, where outputs land."""
    counts = ", ".join(
        f"{data[k]} {k.replace('_', ' ')}"
        for k in ("new", "done", "in_flight", "failed", "changed", "unresolved")
        if data[k] or k not in ("unresolved",)
    )
    lines = [f"{data['batch']}: {data['jobs']} jobs — {counts}"]
    lines += [f"  {slug}: {money(cost, unit)}" for slug, cost in data["cost_by_technique"].items()]
    before = data["spent"] + data["reserved"]
    notes = [f"{money(before, unit)} spent before"] if before else []
    if data["max_cost"] is not None:
        notes.append(f"max_cost {money(data['max_cost'], unit)}")
    note = f" ({'; '.join(notes)})" if notes else ""
    lines.append(f"  estimated cost {money(data['estimated_cost'], unit)}{note}")
    lines += plan_upload_lines(data.get("uploads"))
    flying = data.get("superseded_in_flight")
    if flying:
        from ..manifest.naming import SUPERSEDED_FOLDER

        folder = f"{data['results']}/{SUPERSEDED_FOLDER}/"
        lines.append(
            f"  {flying} job(s) of edited or removed rows have runs in flight: they will be "
            f"finished and saved under {folder} (never bought again)"
        )
    lines += [f"  results {data['results']}", f"  ledger  {data['ledger']}"]
    lines += [f"  skipped {problem}" for problem in skipped[:20]]
    if over:
        lines.append("Over budget: `run` would stop at max_cost; raise it or split the rows.")
    return lines


def size_text(count: int) -> str:
    """``512 B``, ``4.4 MB``: a byte count for people (decimal units)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    return f"{count} B"  # pragma: no cover


def plan_upload_lines(up: dict[str, int] | None) -> list[str]:
    """``plan``'s line about input files: how many, how big, how many already in FLORA."""
    if not up:
        return []
    web = f", {up['web']} from the web" if up["web"] else ""
    again = f"; {up['failed']} failed last time" if up["failed"] else ""
    return [
        f"  uploads {up['files']} input file(s) ({size_text(up['bytes'])}{web}): "
        f"{up['uploaded']} already uploaded, {up['to_upload']} to upload "
        f"({size_text(up['bytes_to_upload'])}){again}"
    ]


def superseded_lines(records: Sequence[JobRecord], results: Path) -> list[str]:
    """The run summary's lines about the jobs of edited or removed rows whose paid runs
    it finished (``BatchResult.superseded``): apart from the rows' counts."""
    from ..manifest.naming import SUPERSEDED_FOLDER

    if not records:
        return []
    states = Counter(r.state.value for r in records)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    lines = [
        f"  superseded {len(records)} job(s) of edited or removed rows: their paid runs "
        f"finished ({counts}); files in {results / SUPERSEDED_FOLDER}"
    ]
    for rec in [r for r in records if r.state is JobState.UNRESOLVED][:10]:
        lines.append(f"  UNRESOLVED {rec.source or rec.key} ({rec.technique}, superseded)")
    return lines


def upload_lines(report: Any) -> list[str]:
    """The run summary's lines about input files (an ``uploads.UploadReport``)."""
    if not report.files and not report.failed:
        return []
    sent = f", {size_text(report.bytes_sent)} sent" if report.bytes_sent else ""
    lines = [
        f"  uploads {report.files} input file(s): {report.uploaded} uploaded now, "
        f"{report.already} already in FLORA{sent}"
    ]
    shown = list(report.failed.items())
    lines += [f"  not uploaded {source}: {why}" for source, why in shown[:10]]
    return lines


# --- the ledger a command reads --------------------------------------------------------


def _target(
    ctx: click.Context, manifest: Path | None, batch: str | None
) -> tuple[str, str | None, Manifest | None, Settings]:
    """``(ledger url, batch, manifest, settings)`` from ``MANIFEST`` or ``--ledger``
    (``locations.ledger_location``: the same ledger ``run`` writes)."""
    from ..locations import ledger_location

    if manifest is None:
        settings = settings_for(ctx)
        return ledger_location(None, settings), batch, None, settings
    if manifest.suffix.lower() not in (".yaml", ".yml"):
        raise E.UsageError(f"{manifest} is not a manifest (.yaml): use --ledger for a rows file")
    from ..manifest import load_manifest

    m = load_manifest(manifest)
    settings = settings_for(ctx, manifest=m)
    return ledger_location(m, settings), m.name, m, settings


@contextmanager
def _open_ledger(url: str) -> Iterator[Ledger]:
    """The ledger at ``url`` (a ``ledger_location``); a usage error, not a new empty
    ledger, if there is none."""
    from ..ledger import Ledger
    from ..locations import ledger_exists

    if url != ":memory:" and not ledger_exists(url):
        raise E.UsageError(f"no ledger at {url}: nothing has run yet (flora-batch run ...)")
    ledger = Ledger.open(url)
    try:
        yield ledger
    finally:
        ledger.close()


def committed(url: str, batch: str) -> tuple[float, float]:
    """``(spent, reserved)`` of ``batch`` so far (``url``: a ``ledger_location``); zeros
    when its ledger does not exist yet."""
    from ..locations import ledger_exists

    if not ledger_exists(url):
        return 0.0, 0.0
    with _open_ledger(url) as ledger:
        return ledger.money(batch)


def _ledger_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``[MANIFEST]``, ``--ledger``, ``--batch`` and ``--demo``: the ledger's readers."""
    fn = opt.DEMO.saying("Changes nothing: this command reads only the ledger.")(fn)
    fn = opt.BATCH(fn)
    fn = opt.LEDGER.saying(
        "A ledger path or SQLAlchemy URL (env FLORA_LEDGER; default: the manifest's)."
    )(fn)
    return click.argument("manifest", required=False, type=click.Path(path_type=Path))(fn)


# --- status --------------------------------------------------------------------------------

STATUS_EXAMPLES = """
\b
Examples:
  flora-batch status spring.yaml                  # one look
  flora-batch status spring.yaml --watch          # refresh every 2 s until all finished
  flora-batch status --ledger shared.db --json    # every batch of a ledger, for scripts
"""


@click.command("status", epilog=STATUS_EXAMPLES)
@_ledger_options
@opt.WATCH
@opt.INTERVAL
@opt.JSON.saying("Print JSON (one object per refresh).")
@click.pass_context
def status(
    ctx: click.Context,
    /,
    manifest: Path | None,
    batch: str | None,
    watch: bool,
    interval: float,
    as_json: bool,
    **_settings: Any,
) -> None:
    """Where a batch stands: jobs by state, money, throughput, ETA, failures by code.

    Reads the ledger only (MANIFEST's, or --ledger); it never talks to FLORA.
    """
    from ..report import status as st

    url, batch, _, _ = _target(ctx, manifest, batch)
    with _open_ledger(url) as led:
        try:
            while True:
                now = st.gather(led, batch, time.time())
                _show_status(now, as_json=as_json, redraw=watch and not as_json)
                if not watch or now.finished:
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            return


def _show_status(status: st.Status, *, as_json: bool, redraw: bool) -> None:
    from ..report import status as st

    if as_json:
        click.echo(json.dumps(status.as_dict(), ensure_ascii=False))
        return
    if redraw and sys.stdout.isatty():
        click.clear()
    click.echo("\n".join(st.lines(status)))


# --- report --------------------------------------------------------------------------------

REPORT_EXAMPLES = """
\b
Examples:
  flora-batch report spring.yaml                  # into <results>/_report/
  flora-batch report spring.yaml --out /tmp/review
  flora-batch report --ledger shared.db --batch spring --results results/spring
"""


@click.command("report", epilog=REPORT_EXAMPLES)
@_ledger_options
@opt.RESULTS.saying("The results folder (default: the manifest's output.dir).")
@opt.OUT
@click.pass_context
def report(
    ctx: click.Context,
    /,
    manifest: Path | None,
    batch: str | None,
    out: Path | None,
    **_settings: Any,
) -> None:
    """Write a results table (CSV, XLSX, JSONL), an HTML contact sheet and asset sidecars.

    The table follows the input rows in order, with each job's status, output files
    (relative to the results folder), run id, cost and error.  index.html opens from
    disk with no server.  Each output gets <file>.json beside it: its provenance.
    """
    from ..report import files
    from ..report import lines as rp
    from ..report import status as st

    url, batch, m, settings = _target(ctx, manifest, batch)
    with _open_ledger(url) as led:
        records = led.jobs(batch=batch)
        uploads = led.uploads()
        unit = led.cost_unit({r.batch for r in records})
        gone = st.superseded_keys(led, {r.batch for r in records})
    if m is not None:
        from ..locations import results_location
        from ..manifest.rows import load_rows

        _, rows = load_rows(m.rows, m.path)
        lines = rp.join(rows, [u.slug for u in m.uses], records, m.id_column, gone)
        root = results_location(m, settings)
    else:
        lines = rp.lines_from_ledger(records, gone)
        root = settings.results or rp.common_root(records)
    written = files.write_report(
        lines,
        root=root,
        out_dir=out or root / "_report",
        title=batch or "flora-batch",
        generated=time.time(),
        uploads=uploads,
        unit=unit,
    )
    if not ctx.obj.get("quiet"):
        summary = rp.summary(lines)
        counts = ", ".join(f"{n} {s}" for s, n in summary["statuses"].items()) or "no jobs"
        cards = len({line.group for line in lines})
        click.echo(f"{cards} rows, {len(lines)} jobs ({counts}); {written.sidecars} sidecars")
    for path in written.files:
        click.echo(str(path))


COMMANDS = (techniques, init, status, report)

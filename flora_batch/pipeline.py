"""A batch, top to bottom: manifest → schemas → jobs → plan → ledger → worker → summary.

``run_batch`` is the whole story of ``flora-batch run``; ``plan_batch`` is the same up to
the plan, without a single paid request.  I/O comes in through arguments (settings,
transport, clock), so tests drive the real thing against the emulator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import retrying
from .client import FloraClient
from .config import Settings, check_workspace_id
from .errors import AuthError, FloraError, InsufficientCredits, ManifestError, ManifestProblems
from .keys import job_key
from .ledger import Ledger
from .manifest import Manifest, build_jobs, check_manifest
from .plan import Plan, make_plan
from .results import Results
from .rows import load_rows
from .sources import MediaInputs, UploadSource, UploadSummary, needed_sources, summarise
from .types import JobKey, JobRecord, JobSpec, JobState, Technique
from .uploads import FileProbe, Uploader, UploadReport
from .worker import Outcome, ProgressHook, Snapshot, Worker

Clock = Callable[[], float]


@dataclass
class Prepared:
    """A validated batch: its schemas, its jobs and what the ledger already knows of them."""

    manifest: Manifest
    techniques: dict[str, Technique]
    specs: list[JobSpec]
    keyed: list[tuple[JobKey, JobSpec]]
    skipped: list[ManifestError]
    plan: Plan
    uploads: dict[str, UploadSource] = field(default_factory=dict)  # by upload key
    upload_summary: UploadSummary | None = None
    workspace_id: str | None = None


@dataclass
class BatchResult:
    """What ``run_batch`` hands back to the CLI to summarise."""

    prepared: Prepared
    outcome: Outcome
    results_dir: Path
    ledger_url: str
    retried: int = 0
    unresolved: list[JobRecord] = field(default_factory=list)
    failed: list[JobRecord] = field(default_factory=list)
    uploads: UploadReport | None = None


def ledger_location(manifest: Manifest, settings: Settings) -> str:
    """Flag, then manifest, then ``<name>.ledger.db`` beside the manifest."""
    if settings.ledger:
        return settings.ledger
    if manifest.ledger:
        return manifest.ledger
    return str(manifest.path.parent / f"{manifest.name}.ledger.db")


def workspace_location(manifest: Manifest, settings: Settings) -> str | None:
    """The workspace input files are uploaded to: flag or environment, then manifest."""
    return check_workspace_id(settings.workspace_id) or manifest.workspace_id


def results_location(manifest: Manifest, settings: Settings) -> Path:
    """Flag, then the manifest's ``output.dir``."""
    return settings.results or manifest.output_dir


async def fetch_techniques(client: FloraClient, manifest: Manifest) -> dict[str, Technique]:
    """Each technique's schema (free requests), with a located error for an unknown slug."""
    from .errors import NotFound

    found: dict[str, Technique] = {}
    missing: list[ManifestError] = []
    for use in manifest.uses:
        if use.slug in found:
            continue
        try:
            # A free, repeatable read: a 429 or 5xx here must not end the run.
            found[use.slug] = await retrying.call(
                lambda slug=use.slug: client.get_technique(slug),  # type: ignore[misc]
                what=f"technique {use.slug}",
            )
        except NotFound:
            missing.append(
                ManifestError(
                    f"FLORA has no technique {use.slug!r} (see `flora-batch techniques`)",
                    path=str(manifest.path),
                    line=use.line,
                )
            )
    if missing:
        raise ManifestProblems(missing)
    return found


async def prepare(
    manifest: Manifest, client: FloraClient, ledger: Ledger | None, settings: Settings
) -> Prepared:
    """Validate every row against the live schemas and plan against the ledger."""
    techniques = await fetch_techniques(client, manifest)
    columns, rows = load_rows(manifest.rows, manifest.path)
    fatal = check_manifest(manifest, columns, techniques)
    if fatal:  # problems of the manifest itself stop the batch even with --skip-invalid
        raise ManifestProblems(fatal)
    workspace = workspace_location(manifest, settings)
    media = MediaInputs(FileProbe(manifest.path.parent), uploads=workspace is not None)
    specs, problems = build_jobs(manifest, columns, rows, techniques, media=media)
    skip = settings.skip_invalid or manifest.skip_invalid
    if problems and (media.needs_workspace or not skip):  # no workspace: no run at all
        raise ManifestProblems(problems)
    keyed = [(job_key(s), s) for s in specs]
    known = _known(ledger, manifest.name)
    plan = make_plan(specs, known, techniques, retry_failed=settings.retry_failed)
    uploads = needed_sources((s.inputs for s in specs), media.sources)
    held = ledger.uploads(uploads) if ledger is not None and uploads else {}
    summary = summarise(uploads, held, workspace) if uploads else None
    return Prepared(
        manifest, techniques, specs, keyed, problems, plan, uploads, summary, workspace
    )


def _known(
    ledger: Ledger | None, batch: str
) -> dict[JobKey, tuple[JobState, str, str | None, int]]:
    if ledger is None:
        return {}
    return {r.key: (r.state, r.technique, r.row_id, r.row_index) for r in ledger.jobs(batch=batch)}


async def plan_batch(
    manifest: Manifest,
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[Prepared, str]:
    """A dry run: validation and the plan, reading (never writing) an existing ledger."""
    url = ledger_location(manifest, settings)
    ledger = Ledger.open(url) if _ledger_exists(url) else None
    try:
        async with FloraClient(settings.base_url, settings.api_key, transport=transport) as client:
            return await prepare(manifest, client, ledger, settings), url
    finally:
        if ledger is not None:
            ledger.close()


def _ledger_exists(url: str) -> bool:
    return "://" in url or Path(url).exists()


async def run_batch(
    manifest: Manifest,
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = time.time,
    progress: ProgressHook | None = None,
    on_worker: Callable[[Worker], None] | None = None,
) -> BatchResult:
    """Run a batch to the end (or a clean stop); safe to call again after any crash."""
    ledger = Ledger.open(ledger_location(manifest, settings))
    try:
        ledger.acquire_runner_lock()
        async with FloraClient(
            settings.base_url, settings.api_key, transport=transport, timeout=settings.timeout
        ) as client:
            prepared = await prepare(manifest, client, ledger, settings)
            results = Results(results_location(manifest, settings))
            results.prepare()
            ledger.record_planned(
                prepared.keyed,
                quoted_cost={slug: t.run_cost for slug, t in prepared.techniques.items()},
                now=clock(),
            )
            uploader = _uploader(ledger, client, prepared, settings, clock)
            retried = _reopen(ledger, prepared, settings, clock)
            jobs = _jobs_of(ledger, prepared)
            worker = Worker(
                ledger,
                client,
                results,
                prepared.techniques,
                settings=settings,
                concurrency=settings.concurrency or manifest.concurrency or 4,
                max_cost=settings.max_cost if settings.max_cost is not None else manifest.max_cost,
                clock=clock,
                progress=_with_uploads(progress, uploader),
                resolve_inputs=uploader.resolve_inputs if uploader else None,
            )
            if on_worker is not None:
                on_worker(worker)
            outcome = await _work(worker, uploader, jobs)
        final = _jobs_of(ledger, prepared)
        return BatchResult(
            prepared,
            outcome,
            results.root,
            ledger.url,
            retried,
            unresolved=[j for j in final if j.state is JobState.UNRESOLVED],
            failed=[j for j in final if j.state is JobState.FAILED],
            uploads=uploader.report if uploader else None,
        )
    finally:
        ledger.release_runner_lock()
        ledger.close()


def _uploader(
    ledger: Ledger, client: FloraClient, prepared: Prepared, settings: Settings, clock: Clock
) -> Uploader | None:
    """The upload stage, its files recorded as ``planned`` (None: no input files)."""
    if not prepared.uploads or prepared.workspace_id is None:
        return None
    uploader = Uploader(
        ledger,
        client,
        prepared.uploads,
        workspace_id=prepared.workspace_id,
        folder=settings.asset_folder or prepared.manifest.asset_folder,
        settings=settings,
        clock=clock,
        concurrency=settings.upload_concurrency,
    )
    uploader.record(clock())
    return uploader


async def _work(worker: Worker, uploader: Uploader | None, jobs: list[JobRecord]) -> Outcome:
    """The worker, with the upload stage beside it; a fatal upload error stops the batch."""
    if uploader is None:
        return await worker.run(jobs)
    uploader.plan(jobs)
    stage = asyncio.ensure_future(uploader.run(worker.stop_event))
    try:
        outcome = await worker.run(jobs)
    finally:
        stage.cancel()
        (ended,) = await asyncio.gather(stage, return_exceptions=True)
    if isinstance(ended, Exception) and not isinstance(ended, asyncio.CancelledError):
        raise ended  # a bug in the upload stage: surface it
    fatal = uploader.fatal
    if fatal is not None and outcome.error is None:
        outcome.error = fatal
        outcome.stopped = outcome.stopped or _stop_reason(fatal)
    return outcome


def _stop_reason(exc: FloraError) -> str:
    if isinstance(exc, InsufficientCredits):
        return "credits"
    return "auth" if isinstance(exc, AuthError) else "error"


def _with_uploads(progress: ProgressHook | None, uploader: Uploader | None) -> ProgressHook | None:
    """The progress hook, told how many input files are ready."""
    if progress is None or uploader is None:
        return progress
    shown = progress

    def hook(snap: Snapshot) -> None:
        shown(dataclasses.replace(snap, uploads=uploader.counts()))

    return hook


def _reopen(ledger: Ledger, prepared: Prepared, settings: Settings, clock: Clock) -> int:
    """``--retry-failed`` and ``--resubmit-unresolved``: the only ways a job is bought again."""
    count = 0
    wanted = {k for k, _ in prepared.keyed}
    for rec in ledger.jobs(batch=prepared.manifest.name):
        if rec.key not in wanted:
            continue
        if (
            settings.retry_failed
            and rec.state is JobState.FAILED
            and rec.error_category == "retryable"
        ):
            ledger.retry_failed(rec.key, now=clock())
            count += 1
        elif settings.resubmit_unresolved and rec.state is JobState.UNRESOLVED:
            ledger.resubmit_unresolved(rec.key, now=clock())
            count += 1
    return count


def _jobs_of(ledger: Ledger, prepared: Prepared) -> list[JobRecord]:
    """This manifest's jobs in input order (jobs of rows that were removed are left alone)."""
    wanted = {k for k, _ in prepared.keyed}
    return [r for r in ledger.jobs(batch=prepared.manifest.name) if r.key in wanted]

"""A batch, top to bottom: manifest → schemas → jobs → plan → ledger → worker → summary.

``run_batch`` is the whole story of ``flora-batch run``; ``plan_batch`` is the same up to
the plan, without a single paid request.  I/O comes in through arguments (settings,
transport, clock), so tests drive the real thing against the emulator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import memo, retrying
from .config import Settings
from .errors import (
    AuthError,
    FloraError,
    InsufficientCredits,
    ManifestError,
    ManifestProblems,
)
from .ledger import Ledger
from .locations import ledger_exists, ledger_location, results_location, workspace_location
from .manifest import Manifest
from .manifest.jobs import build_keyed_jobs, check_manifest
from .manifest.rows import load_rows
from .manifest.sources import MediaInputs, UploadSource, UploadSummary, needed_sources, summarise
from .plan import (
    Plan,
    plan_keyed,
    plan_known,
)
from .remote.client import FloraClient
from .results.local import Results
from .settling import as_ended, note_gone, settle_jobs, superseded_in_flight
from .types import JobKey, JobRecord, JobSpec, JobState, SavedJob, Technique, cost_unit
from .uploads import FileProbe, Uploader, UploadReport
from .worker import Outcome, ProgressHook, Snapshot, Worker

Clock = Callable[[], float]
log = logging.getLogger("flora_batch.pipeline")


@dataclass(repr=False)
class Prepared:
    """A validated batch: its schemas, its plan against the ledger and its new jobs.

    ``plan.keys`` names every job of the batch; only the new ones keep their ``JobSpec``
    (``new_jobs``): on a resumed batch of 100,000, none.  ``memo`` says the keys came
    from the plan memo (``memo.py``) rather than from rendering the rows again.

    Its repr is one line: ``asyncio.run`` formats the repr of the task that returned it
    (when it restores the SIGINT handler), and a generated repr of 100,000 job specs
    took seconds.
    """

    manifest: Manifest
    techniques: dict[str, Technique]
    skipped: list[ManifestError]
    plan: Plan
    fresh: list[tuple[JobKey, JobSpec]] = field(default_factory=list)
    uploads: dict[str, UploadSource] = field(default_factory=dict)  # by upload key
    upload_summary: UploadSummary | None = None
    workspace_id: str | None = None
    memo: bool = False
    #: The batch's done jobs, light, when planning read them (new jobs' names were
    #: checked against their files): ``run`` takes them from here (``_saved_of``).
    saved: list[SavedJob] | None = None

    @property
    def keys(self) -> tuple[JobKey, ...]:
        """Every job of the batch, in row order."""
        return self.plan.keys

    def new_jobs(self) -> list[tuple[JobKey, JobSpec]]:
        """The jobs the plan found new, with their specs, in row order.

        ``record_planned`` still checks every key it is given inside its own transaction,
        so a job another process recorded since the plan is left alone; a job the plan saw
        in the ledger stays there (jobs are never deleted).
        """
        return self.fresh

    def __repr__(self) -> str:
        return f"<Prepared {self.manifest.name!r}: {len(self.keys)} jobs>"


@dataclass(repr=False)
class BatchResult:
    """What ``run_batch`` hands back to the CLI to summarise (a one-line repr, as Prepared)."""

    prepared: Prepared
    outcome: Outcome
    results_dir: Path
    ledger_url: str
    retried: int = 0
    unresolved: list[JobRecord] = field(default_factory=list)
    failed: list[JobRecord] = field(default_factory=list)
    uploads: UploadReport | None = None
    #: Jobs of edited or removed rows whose paid run this run finished (``Plan.superseded``),
    #: as they ended; not counted in ``outcome.counts``, which are the rows' jobs.
    superseded: list[JobRecord] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<BatchResult {self.prepared!r}: {dict(self.outcome.counts)}>"


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
    manifest: Manifest,
    client: FloraClient,
    ledger: Ledger | None,
    settings: Settings,
    *,
    remember: bool = False,
) -> Prepared:
    """Validate every row against the live schemas and plan against the ledger.

    With ``remember`` (the commands that write the ledger), a batch planned the long
    way leaves its keys in the ledger's plan memo for the next resume (``memo.py``).
    """
    techniques = await fetch_techniques(client, manifest)
    digest = None
    if ledger is not None:  # before the rows are read: see _remember
        uploads = workspace_location(manifest, settings) is not None
        digest = memo.batch_digest(manifest, techniques, uploads=uploads)
    with _no_gc():
        if ledger is not None and digest is not None:
            remembered = _from_memo(manifest, techniques, ledger, settings, digest)
            if remembered is not None:
                return remembered
        return _prepared(
            manifest, techniques, ledger, settings, digest=digest if remember else None
        )


def _from_memo(
    manifest: Manifest,
    techniques: dict[str, Technique],
    ledger: Ledger,
    settings: Settings,
    digest: str,
) -> Prepared | None:
    """The batch planned from its memo, or None: no memo, another digest, or a key the
    ledger does not hold (then something is new, and the long way records it)."""
    keys = memo.decode(ledger.get_meta(memo.memo_name(manifest.name)), digest)
    if not keys:
        return None
    known = ledger.known_slots(manifest.name)
    if any(key not in known for key in keys):
        return None
    plan = plan_known(manifest.name, keys, known, techniques, retry_failed=settings.retry_failed)
    log.info("%s: %d jobs planned from the plan memo (none keyed again)", manifest.name, len(keys))
    workspace = workspace_location(manifest, settings)
    return Prepared(manifest, techniques, [], plan, workspace_id=workspace, memo=True)


def _prepared(
    manifest: Manifest,
    techniques: dict[str, Technique],
    ledger: Ledger | None,
    settings: Settings,
    *,
    digest: str | None,
) -> Prepared:
    """``prepare`` once the schemas are known: rows, jobs, plan (no await, no request).

    With ``digest`` (taken before the rows were read), the keys are left in the plan memo.
    """
    workspace = workspace_location(manifest, settings)
    columns, rows = load_rows(manifest.rows, manifest.path)
    fatal = check_manifest(manifest, columns, techniques)
    if fatal:  # problems of the manifest itself stop the batch even with --skip-invalid
        raise ManifestProblems(fatal)
    media = MediaInputs(FileProbe(manifest.path.parent), uploads=workspace is not None)
    keyed, problems = build_keyed_jobs(manifest, columns, rows, techniques, media=media)
    where = (str(manifest.rows.path or manifest.path), {row.index: row.line for row in rows})
    del rows  # the specs share the rows' cells; the list itself is no longer needed
    known = ledger.known_slots(manifest.name) if ledger is not None else {}
    saved = None
    if ledger is not None:
        keyed, saved = settle_jobs(
            manifest, settings, ledger, techniques, keyed, known, where, problems
        )
    skip = settings.skip_invalid or manifest.skip_invalid
    if problems and (media.needs_workspace or not skip):  # no workspace: no run at all
        raise ManifestProblems(problems)
    plan = plan_keyed(keyed, known, techniques, retry_failed=settings.retry_failed)
    del known  # 100,000 entries: free them before the worker loads the batch
    uploads = needed_sources((s.inputs for _, s in keyed), media.sources)
    if ledger is not None and digest and not problems and not media.sources:
        _remember(ledger, manifest, techniques, digest, plan.keys, workspace)
    new = set(plan.new)
    fresh = [(k, s) for k, s in keyed if k in new] if new else []
    del keyed  # only the new jobs' specs are needed from here on
    held = ledger.uploads(uploads) if ledger is not None and uploads else {}
    summary = summarise(uploads, held, workspace) if uploads else None
    return Prepared(
        manifest,
        techniques,
        problems,
        plan,
        fresh,
        uploads,
        summary,
        workspace_id=workspace,
        saved=saved,
    )


def _remember(
    ledger: Ledger,
    manifest: Manifest,
    techniques: dict[str, Technique],
    digest: str,
    keys: tuple[JobKey, ...],
    workspace: str | None,
) -> None:
    """Store the batch's keys under ``digest``, if the rows file did not change meanwhile
    (the keys must be those of the bytes the digest read)."""
    if memo.batch_digest(manifest, techniques, uploads=workspace is not None) == digest:
        ledger.set_meta(memo.memo_name(manifest.name), memo.encode(digest, keys))


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch's objects are built.

    Building 100,000 jobs (rows, specs, keys, ledger records) allocates millions of
    objects, none of them in a reference cycle, and each allocation burst made the
    collector rescan everything built so far: a quarter of ``plan``'s CPU.  Reference
    counting still frees everything as usual.  On the way out, ``freeze`` + ``unfreeze``
    moves the survivors straight to the oldest generation (CPython's documented way to
    skip collecting them now; a later full collection still sees them), instead of
    one young-generation pass over all of them as soon as the collector is back on.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


async def plan_batch(
    manifest: Manifest,
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[Prepared, str]:
    """A dry run: validation and the plan, reading (never writing) an existing ledger."""
    url = ledger_location(manifest, settings)
    ledger = Ledger.open(url) if ledger_exists(url) else None
    try:
        async with FloraClient(settings.base_url, settings.api_key, transport=transport) as client:
            return await prepare(manifest, client, ledger, settings), url
    finally:
        if ledger is not None:
            ledger.close()


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
            prepared = await prepare(manifest, client, ledger, settings, remember=True)
            ledger.set_cost_unit(manifest.name, cost_unit(prepared.techniques))
            results = Results(results_location(manifest, settings))
            results.prepare()
            ledger.record_planned(
                prepared.new_jobs(),
                quoted_cost={slug: t.run_cost for slug, t in prepared.techniques.items()},
                now=clock(),
            )
            uploader = _uploader(ledger, client, prepared, settings, clock)
            retried = _reopen(ledger, prepared, settings, clock)
            with _no_gc():
                jobs = _jobs_of(ledger, prepared, _NOT_DONE)
                saved = _saved_of(ledger, prepared)
            note_gone(ledger, prepared.manifest.name, prepared.plan)
            superseded = superseded_in_flight(ledger, prepared.manifest.name, prepared.plan)
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
                superseded=frozenset(r.key for r in superseded),
            )
            if on_worker is not None:
                on_worker(worker)
            outcome = await _work(worker, uploader, (jobs, superseded), saved, prepared)
        final = _jobs_of(ledger, prepared, _ENDED_BADLY)
        ended = as_ended(ledger, superseded, outcome)
        return BatchResult(
            prepared,
            outcome,
            results.root,
            ledger.url,
            retried,
            unresolved=[j for j in final if j.state is JobState.UNRESOLVED],
            failed=[j for j in final if j.state is JobState.FAILED],
            uploads=uploader.report if uploader else None,
            superseded=ended,
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


async def _work(
    worker: Worker,
    uploader: Uploader | None,
    jobs: tuple[list[JobRecord], list[JobRecord]],
    saved: list[SavedJob],
    prepared: Prepared,
) -> Outcome:
    """The worker, with the upload stage beside it; a fatal upload error stops the batch.

    ``jobs``: the rows' jobs, and the superseded ones in flight (finished, not uploaded for).
    """
    mine, superseded = jobs
    batch = prepared.manifest.name
    if uploader is None:
        return await worker.run([*mine, *superseded], saved, batch=batch)
    uploader.plan(mine)
    stage = asyncio.ensure_future(uploader.run(worker.stop_event))
    try:
        outcome = await worker.run([*mine, *superseded], saved, batch=batch)
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
    """``--retry-failed`` and ``--resubmit-unresolved``: the only ways a job is bought again;
    and jobs whose run FLORA stopped showing are polled again."""
    count = 0
    for rec in _jobs_of(ledger, prepared, _ENDED_BADLY):
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
        elif rec.state is JobState.UNRESOLVED and rec.run_id is not None:
            # A run FLORA stopped showing (``mark_lost``): ask for it again, it may be
            # back (the key that made it is in use again); never bought again unasked.
            ledger.reopen_lost(rec.key, now=clock())
    return count


#: The states the run summary lists and ``_reopen`` may reopen: few jobs, read alone.
_ENDED_BADLY = frozenset({JobState.FAILED, JobState.UNRESOLVED})
#: The jobs the worker reads whole; done ones come light (``_saved_of``).
_NOT_DONE = frozenset(JobState) - {JobState.DONE}


def _saved_of(ledger: Ledger, prepared: Prepared) -> list[SavedJob]:
    """This manifest's done jobs, light: a resume of 100,000 only checks their files."""
    wanted = set(prepared.keys)
    found = prepared.saved
    if found is None:
        found = ledger.saved_jobs(prepared.manifest.name)
    return [s for s in found if s.key in wanted]


def _jobs_of(
    ledger: Ledger, prepared: Prepared, states: frozenset[JobState] | set[JobState] | None = None
) -> list[JobRecord]:
    """This manifest's jobs (in ``states``) in input order; jobs of removed rows are left alone."""
    wanted = set(prepared.keys)
    found = ledger.jobs(batch=prepared.manifest.name, states=states)
    return [r for r in found if r.key in wanted]

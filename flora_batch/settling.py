"""The plan settled against what the ledger already holds (``pipeline.prepare`` and
``run_batch`` call these; ``plan.py`` stays pure).

* Keys: each row id keeps the job the ledger has for it, whatever numbering made its key
  (``plan.keep_earlier_keys``, given ``Ledger.occurrences``).
* Names: a new job whose output file would take the name of a file a done job of the batch
  saved is a row problem before anything is bought (``jobs.check_saved_names``).
* Runs of edited or removed rows: the keys no row produces are noted in the ledger for the
  commands that read no manifest (``note_gone``), and those whose paid run may be in flight
  are handed to the worker to finish (``superseded_in_flight``), counted apart (``as_ended``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

from .config import Settings
from .errors import ManifestError
from .ledger import Ledger
from .locations import results_location
from .manifest import Manifest
from .manifest.jobs import check_saved_names
from .plan import (
    RUN_IN_FLIGHT,
    Known,
    Plan,
    gone_text,
    keep_earlier_keys,
    superseded_meta,
)
from .results.local import Results
from .types import JobKey, JobRecord, JobSpec, SavedJob, Technique
from .worker.state import Outcome


def settle_jobs(
    manifest: Manifest,
    settings: Settings,
    ledger: Ledger,
    techniques: dict[str, Technique],
    keyed: list[tuple[JobKey, JobSpec]],
    known: Mapping[JobKey, Known],
    where: tuple[str, dict[int, int]],
    problems: list[ManifestError],
) -> tuple[list[tuple[JobKey, JobSpec]], list[SavedJob] | None]:
    """The batch's jobs as the ledger knows them: each row id keeps its earlier key
    (``plan.keep_earlier_keys``), and a new job whose file name a saved file of the
    batch has is dropped as a row problem (``jobs.check_saved_names``).  Also the
    batch's done jobs, if they were read for that (``Prepared.saved``)."""
    keyed = keep_earlier_keys(keyed, known, ledger.occurrences(manifest.name))
    new = [(k, s) for k, s in keyed if k not in known]
    if not new:
        return keyed, None
    saved = ledger.saved_jobs(manifest.name)
    names = _saved_names(saved, results_location(manifest, settings), keyed)
    ids = ledger.output_ids(manifest.name) if names else {}
    kept = check_saved_names(
        manifest, new, (names, _whose(known)), ids, techniques, where, problems
    )
    if len(kept) < len(new):
        dropped = {k for k, _ in new} - {k for k, _ in kept}
        keyed = [(k, s) for k, s in keyed if k not in dropped]
    return keyed, saved


def _saved_names(
    saved: list[SavedJob],
    root: Path,
    keyed: list[tuple[JobKey, JobSpec]],
) -> dict[str, JobKey]:
    """The names of the files that the done jobs the rows still produce saved in the
    results folder ``root`` (an edited row's old job is not one), -> whose file."""
    name_of = Results(root).name_of
    mine = {k for k, _ in keyed}
    names: dict[str, JobKey] = {}
    for job in saved:
        if job.key in mine:
            for path, _, _ in job.files:
                name = name_of(path) if path else None
                if name is not None:
                    names.setdefault(name, job.key)
    return names


def _whose(known: Mapping[JobKey, Known]) -> Callable[[JobKey], str]:
    """How a clash names the job that saved a file: its row and technique, its state."""

    def describe(key: JobKey) -> str:
        state, technique, row_id, row_index = known[key]
        row = row_id if row_id is not None else f"row {row_index + 1}"
        return f"{row} ({technique}, {state.value})"

    return describe


def note_gone(ledger: Ledger, batch: str, plan: Plan) -> None:
    """Leave ``plan.gone()`` (the keys no row produces) in the ledger for ``status``,
    ``report`` and cluster workers, which read no manifest (``plan.superseded_meta``)."""
    gone = gone_text(plan)
    name = superseded_meta(batch)
    if ledger.get_meta(name) != gone:
        ledger.set_meta(name, gone)


def superseded_in_flight(ledger: Ledger, batch: str, plan: Plan) -> list[JobRecord]:
    """The jobs of edited or removed rows whose paid run may be in flight
    (``Plan.superseded``), for the worker to finish."""
    wanted = set(plan.superseded)
    if not wanted:
        return []
    found = ledger.jobs(batch=batch, states=RUN_IN_FLIGHT)
    return [r for r in found if r.key in wanted]


def as_ended(ledger: Ledger, superseded: list[JobRecord], outcome: Outcome) -> list[JobRecord]:
    """The superseded jobs as they are now, taken out of ``outcome.counts`` (the rows')."""
    if not superseded:
        return []
    ended = [ledger.get(r.key) for r in superseded]
    outcome.counts.subtract(r.state for r in ended)
    outcome.counts += Counter()  # drop the states left at zero
    return ended

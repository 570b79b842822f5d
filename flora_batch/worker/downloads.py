"""Downloads: every output of a completed run, fetched, verified and saved under its name.

A job is ``done`` only when every output is on disk with its hash in the ledger; an
output already saved is never fetched again.  Output URLs expire, so a 403/404/410
fetches fresh ones from the run; names come from the manifest's ``output.name`` and a
name another job's file already has is refused, never overwritten.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from .. import retrying
from ..config import Settings
from ..errors import ApiError, FloraError, NotFound, ResponseRefused, ResultsError
from ..ledger import Ledger
from ..manifest.naming import SUPERSEDED_FOLDER, ext_for, render_output_name
from ..remote.client import Downloaded, FloraClient
from ..results.local import ResultStore
from ..types import JobKey, JobRecord, JobState, OutputRecord, RunInfo, SavedJob
from .state import Board, Clock, committed

log = logging.getLogger("flora_batch.worker")

_MAX_DOWNLOAD_ROUNDS = 4


class _SavedFile(TypedDict):
    """The keyword arguments that record a saved file in the ledger."""

    path: str
    size: int
    sha256: str
    content_type: str | None
    now: float


@dataclass
class Names:
    """The output names taken in this results location, casefolded, with their jobs.

    Jobs loaded with saved files are claimed lazily, at the first download: a resumed
    batch that is all done claims nothing (``unclaimed``: whole records;
    ``unclaimed_saved``: done jobs loaded light, by their recorded paths).
    """

    taken: dict[str, JobKey] = field(default_factory=dict)
    unclaimed: list[JobRecord] = field(default_factory=list)
    unclaimed_saved: list[SavedJob] = field(default_factory=list)


@dataclass(frozen=True)
class Fetched:
    """How a download round ended: the job done, a later round, or stuck (with why)."""

    done: bool = False
    again_at: float | None = None
    stuck: str | None = None


class Downloader:
    """The worker's download step: a completed run's outputs to verified files."""

    def __init__(
        self,
        *,
        client: FloraClient,
        ledger: Ledger,
        results: ResultStore,
        board: Board,
        names: Names,
        settings: Settings,
        clock: Clock,
        superseded: frozenset[JobKey] = frozenset(),
    ) -> None:
        self.client, self.ledger, self.results, self.board = client, ledger, results, board
        self.names, self.settings, self.clock = names, settings, clock
        #: Jobs of edited or removed rows whose paid run is finished anyway; their files
        #: go under ``naming.SUPERSEDED_FOLDER``, apart from the rows'.
        self.superseded = superseded
        self.rounds: Counter[JobKey] = Counter()
        #: Completed runs with one output, being fetched: the ledger learns of the run's
        #: end with the file (``finish_run``), or, if that fails, first (``downloading``).
        self.completed_runs: dict[JobKey, RunInfo] = {}

    async def download(self, key: JobKey, fresh: RunInfo | None = None) -> Fetched:
        """Fetch every output not yet on disk; a job is done only when all are verified.

        Args:
            fresh: a run that just completed with one output, not recorded yet: its
                file and its end are recorded together (``finish_run``).

        Raises:
            ResultsError: the results folder cannot be written (the batch stops).
        """
        self.rounds[key] += 1
        if fresh is not None:
            self.completed_runs[key] = fresh
        try:
            run = self.completed_runs.get(key)
            if run is not None:
                await self._download_only(key, run)
            # The ledger's order (by output id, in its collation): ``{index}`` in a name
            # must be the same whichever way the job was read.
            # (After ``_download_only``: only an output that a refreshed run added.)
            for index, out in enumerate(self.board[key].outputs):
                if not out.sha256:
                    await self._download_one(key, index, out)
        except ResultsError:
            raise
        except FloraError as exc:
            if self.rounds[key] >= _MAX_DOWNLOAD_ROUNDS:
                return Fetched(stuck=f"download kept failing: {exc}")
            return Fetched(again_at=self.clock() + self.settings.min_poll)
        rec = self.board[key]
        if rec.state is not JobState.DONE:  # nothing was left to save: done without a file
            rec = self.board.update(self.ledger.mark_done(key, now=self.clock()))
        log.info("done %s", rec.source or key)
        return Fetched(done=True)

    def _record_outputs(self, key: JobKey, run: RunInfo) -> None:
        """``downloading``: the completed run's outputs and bill, before their files."""
        self.board.update(
            self.ledger.mark_downloading(
                key, run.outputs, now=self.clock(), charged_cost=run.charged_cost
            )
        )

    async def _download_only(self, key: JobKey, run: RunInfo) -> None:
        """The one output of a run that just completed (``Tracker._completed``): fetched,
        then the run's end, its output and the file recorded in one commit (``finish_run``).

        The outputs are recorded first (``downloading``) when the fetch fails, so the
        usual rounds take over, or when its URL had expired and was refreshed.
        """
        out = run.outputs[0]
        try:
            path, saved = await self._fetch(key, 0, OutputRecord(out.output_id, out.type, out.url))
        except Exception:
            if self.completed_runs.pop(key, None) is not None:
                self._record_outputs(key, run)
            raise
        if self.completed_runs.pop(key, None) is None:  # recorded meanwhile: a fresh URL
            self._save(key, out.output_id, path, saved)
            return
        file = self._file(path, saved)
        self.board.update(self.ledger.finish_run(key, out, **file, charged_cost=run.charged_cost))

    async def _download_one(self, key: JobKey, index: int, out: OutputRecord) -> None:
        """One output of a job in ``downloading``: fetched, then saved in the ledger."""
        path, saved = await self._fetch(key, index, out)
        self._save(key, out.output_id, path, saved)

    def _save(self, key: JobKey, output_id: str, path: str, saved: Downloaded) -> None:
        """One commit records the file and, after the job's last output, makes it done."""
        self.board.update(self.ledger.save_output(key, output_id, **self._file(path, saved)))

    def _file(self, path: str, saved: Downloaded) -> _SavedFile:
        """What the ledger records of a file put in place (``save_output``, ``finish_run``)."""
        return {
            "path": path,
            "size": saved.size,
            "sha256": saved.sha256,
            "content_type": saved.content_type,
            "now": self.clock(),
        }

    async def _fetch(self, key: JobKey, index: int, out: OutputRecord) -> tuple[str, Downloaded]:
        """Put an output's file under its final name: where it went, and what it holds.

        An expired URL (403/404/410) is replaced by a fresh one from the run
        (``_fresh_url``), up to twice.
        """
        rec = self.board[key]
        if out.type == "text":
            rel = self._claim(key, self._name(rec, out, index, None), out, None)
            await committed(self.ledger)  # the job's run known on disk before its file lands
            text = self.results.write_text(out.url, rel)
            return str(text.path), Downloaded(text.size, text.sha256, text.content_type)
        url, refreshed = out.url, 0
        while True:
            sink = self.results.temp_file()
            tmp = sink.path
            try:
                got = await retrying.call(
                    lambda u=url, s=sink: self.client.download(  # type: ignore[misc]
                        u,
                        s,
                        max_bytes=self.settings.max_download_bytes,
                        output_type=out.type,
                        fsync=True,
                    ),
                    what=f"download {out.output_id} of {rec.run_id}",
                )
            except ApiError as exc:
                self.results.discard(tmp)
                if exc.status not in (403, 404, 410) or refreshed == 2:
                    raise
                refreshed += 1
                url = await self._fresh_url(key, out.output_id)
                continue
            except BaseException:
                self.results.discard(tmp)
                raise
            name = self._claim(key, self._name(rec, out, index, got.content_type), out, tmp)
            try:
                await committed(self.ledger)  # the job's run known on disk before its file lands
            except BaseException:
                self.results.discard(tmp)
                raise
            return str(self.results.commit(tmp, name, synced=True)), got

    def _fresh_urls(self, key: JobKey, run: RunInfo) -> None:
        """Store a run's fresh URLs (rare: only when URLs expired); outputs not recorded
        yet (``_download_only``) are recorded with them (``downloading``)."""
        if self.completed_runs.pop(key, None) is not None:
            self._record_outputs(key, run)
        else:
            self.board.update(self.ledger.refresh_output_urls(key, run.outputs))

    def _claim(self, key: JobKey, name: str, out: OutputRecord, tmp: Path | None) -> str:
        """``name``, unless another job's output has it (ignoring case): then refuse.

        Plan time checks names made with the technique's slot ids; the output ids of a
        run come from FLORA, so a clash they cause is caught here and nothing is
        overwritten.  The files saved before this run are claimed first, under the names
        their recorded paths give: the file on disk is what must not be overwritten, and
        no done job is read whole for it (a resume of 100,000 with a few new rows).
        """
        names = self.names
        if names.unclaimed_saved:  # done jobs loaded light: their recorded paths suffice
            saved, names.unclaimed_saved = names.unclaimed_saved, []
            for job in saved:
                self._claim_files(job.key, [path for path, _, sha in job.files if sha])
        while names.unclaimed:
            rec = names.unclaimed.pop()
            self._claim_files(rec.key, [o.path for o in rec.outputs if o.sha256])
        owner = names.taken.setdefault(name.casefold(), key)
        if owner == key:
            return name
        if tmp is not None:
            self.results.discard(tmp)
        jobs = self.board.jobs
        other = jobs[owner].source if owner in jobs else self._source_of(owner)
        raise ResponseRefused(
            f"output {out.output_id!r} would be saved as {name!r}, which is {other}'s file "
            "already: not overwritten (make output.name unique per row)"
        )

    def _claim_files(self, key: JobKey, paths: list[str | None]) -> None:
        """Take the names of a job's saved files (those in this results location)."""
        for path in paths:
            name = self.results.name_of(path) if path else None
            if name is not None:
                self.names.taken.setdefault(name.casefold(), key)

    def _source_of(self, key: JobKey) -> str:
        """Where a job not loaded whole comes from (its row), for a message."""
        try:
            return self.ledger.get(key).source or key
        except FloraError:
            return key

    async def _fresh_url(self, key: JobKey, output_id: str) -> str:
        """Output URLs expire: poll the run again for fresh ones."""
        rec = self.board[key]
        run = await retrying.call(
            lambda: self.client.get_run(rec.technique, rec.run_id or ""), what="refresh URLs"
        )
        self._fresh_urls(key, run)
        fresh = next((o.url for o in run.outputs if o.output_id == output_id), None)
        if fresh is None:
            raise NotFound(f"run {rec.run_id} no longer lists output {output_id}")
        return fresh

    def _name(self, rec: JobRecord, out: OutputRecord, index: int, ctype: str | None) -> str:
        """The output's name: its job's, under ``SUPERSEDED_FOLDER`` for a superseded job."""
        name = render_output_name(
            rec.output_name,
            {k: str(v) for k, v in rec.row.items()},
            technique=rec.technique,
            output_id=out.output_id,
            ext=ext_for(out.type, ctype),
            index=index,
            row_number=rec.row_index + 1,
            key=rec.key.split(":")[-1][:12],
        )
        return f"{SUPERSEDED_FOLDER}/{name}" if rec.key in self.superseded else name

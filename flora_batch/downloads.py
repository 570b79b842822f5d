"""Downloads: every output of a completed run, fetched, verified and saved under its name.

A job is ``done`` only when every output is on disk with its hash in the ledger; an
output already saved is never fetched again.  Output URLs expire, so a 403/404/410
fetches fresh ones from the run; names come from the manifest's ``output.name`` and a
name another job's file already has is refused, never overwritten.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import retrying
from .errors import ApiError, FloraError, NotFound, ResponseRefused, ResultsError
from .naming import ext_for, render_output_name
from .types import JobKey, JobRecord, JobState, OutputRecord, RunOutput
from .workstate import WorkerState

log = logging.getLogger("flora_batch.worker")

_MAX_DOWNLOAD_ROUNDS = 4


class Downloads(WorkerState):
    """The worker's download step (mixed into ``Worker``)."""

    async def _download(self, key: JobKey) -> None:
        """Fetch every output not yet on disk; a job is done only when all are verified."""
        self.download_rounds[key] += 1
        try:
            # The ledger's order (by output id, in its collation), as ``_claim_saved`` sees it:
            # ``{index}`` in a name must be the same whichever way the job was read.
            for index, out in enumerate(self.jobs[key].outputs):
                if not out.sha256:
                    await self._download_one(key, index, out)
        except ResultsError as exc:
            self.abort = exc
            return
        except FloraError as exc:
            self._download_trouble(key, exc)
            return
        rec = self.jobs[key]
        if rec.state is not JobState.DONE:  # nothing was left to save: done without a file
            rec = self._update(self.ledger.mark_done(key, now=self.clock()))
        self._release(key)
        self.done_this_run += 1
        self.last_success = self.clock()
        if rec.charged_cost is None:
            self._schedule(key, self.clock() + self.settings.min_poll, "charge")
        log.info("done %s", rec.source or key)

    def _download_trouble(self, key: JobKey, exc: FloraError) -> None:
        if self.download_rounds[key] >= _MAX_DOWNLOAD_ROUNDS:
            self.stuck[key] = f"download kept failing: {exc}"
            self._release(key)
            return
        self._schedule(key, self.clock() + self.settings.min_poll, "download")

    async def _download_one(self, key: JobKey, index: int, out: OutputRecord) -> None:
        rec = self.jobs[key]
        if out.type == "text":
            rel = self._claim(key, self._name(rec, out, index, None), out, None)
            await self._committed()  # the job's run and outputs known before its file lands
            saved = self.results.write_text(out.url, rel)
            path, size, sha, ctype = saved.path, saved.size, saved.sha256, saved.content_type
        else:
            url = out.url
            for refresh in range(3):
                tmp = self.results.temp_path()
                try:
                    got = await retrying.call(
                        lambda u=url, t=tmp: self.client.download(  # type: ignore[misc]
                            u,
                            t,
                            max_bytes=self.settings.max_download_bytes,
                            output_type=out.type,
                            fsync=True,
                        ),
                        what=f"download {out.output_id} of {rec.run_id}",
                    )
                except ApiError as exc:
                    self.results.discard(tmp)
                    if exc.status not in (403, 404, 410) or refresh == 2:
                        raise
                    url = await self._fresh_url(key, out.output_id)
                    continue
                except BaseException:
                    self.results.discard(tmp)
                    raise
                name = self._claim(key, self._name(rec, out, index, got.content_type), out, tmp)
                try:
                    await self._committed()  # the job's run and outputs known before it lands
                except BaseException:
                    self.results.discard(tmp)
                    raise
                path = self.results.commit(tmp, name, synced=True)
                size, sha, ctype = got.size, got.sha256, got.content_type
                break
        # One commit records the file and, after the job's last output, makes it done.
        self._update(
            self.ledger.save_output(
                key,
                out.output_id,
                path=str(path),
                size=size,
                sha256=sha,
                content_type=ctype,
                now=self.clock(),
            )
        )

    def _fresh_urls(self, key: JobKey, fresh: tuple[RunOutput, ...]) -> None:
        """Store fresh URLs; the job as it now is (rare: only when URLs expired)."""
        self._update(self.ledger.refresh_output_urls(key, fresh))

    def _claim(self, key: JobKey, name: str, out: OutputRecord, tmp: Path | None) -> str:
        """``name``, unless another job's output has it (ignoring case): then refuse.

        Plan time checks names made with the technique's slot ids; the output ids of a
        run come from FLORA, so a clash they cause is caught here and nothing is
        overwritten.  Names of outputs saved before this run are claimed first.
        """
        if self.unclaimed_keys:  # done jobs loaded light: read them whole, once
            wanted, self.unclaimed_keys = self.unclaimed_keys, set()
            done = self.ledger.jobs(batch=self.batch, states=(JobState.DONE,))
            self.unclaimed.extend(r for r in done if r.key in wanted)
        while self.unclaimed:
            self._claim_saved(self.unclaimed.pop())
        owner = self.names.setdefault(name.casefold(), key)
        if owner == key:
            return name
        if tmp is not None:
            self.results.discard(tmp)
        other = self.jobs[owner].source if owner in self.jobs else None
        other = other or self.saved_sources.get(owner) or owner
        raise ResponseRefused(
            f"output {out.output_id!r} would be saved as {name!r}, which is {other}'s file "
            "already: not overwritten (make output.name unique per row)"
        )

    def _claim_saved(self, rec: JobRecord) -> None:
        if rec.key not in self.jobs:
            self.saved_sources[rec.key] = rec.source
        for index, out in enumerate(rec.outputs):
            if out.sha256:
                name = self._name(rec, out, index, out.content_type)
                self.names.setdefault(name.casefold(), rec.key)

    async def _fresh_url(self, key: JobKey, output_id: str) -> str:
        """Output URLs expire: poll the run again for fresh ones."""
        rec = self.jobs[key]
        run = await retrying.call(
            lambda: self.client.get_run(rec.technique, rec.run_id or ""), what="refresh URLs"
        )
        self._fresh_urls(key, run.outputs)
        fresh = next((o.url for o in run.outputs if o.output_id == output_id), None)
        if fresh is None:
            raise NotFound(f"run {rec.run_id} no longer lists output {output_id}")
        return fresh

    def _name(self, rec: JobRecord, out: OutputRecord, index: int, ctype: str | None) -> str:
        return render_output_name(
            rec.output_name,
            {k: str(v) for k, v in rec.row.items()},
            technique=rec.technique,
            output_id=out.output_id,
            ext=ext_for(out.type, ctype),
            index=index,
            row_number=rec.row_index + 1,
            key=rec.key.split(":")[-1][:12],
        )

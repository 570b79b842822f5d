"""The ledger: every job's state, so an interrupted batch resumes and never pays twice.

``Ledger`` is the one object the rest of flora-batch uses; its SQL lives here and in
the helpers of this package (``core``, ``tx``, ``outputs_sql``).  Each method is one short
transaction (callers are async code; nothing is held across an ``await``).  A state
change is a guarded ``UPDATE jobs ... WHERE key = :k AND state IN (:expected)`` plus
one ``events`` row, in the same transaction; a job in any other state raises
:class:`~flora_batch.errors.LedgerConflict` naming the expected and actual states, and
nothing changes.  The legal moves (``moves.py``)::

    mark_submitting       planned -> submitting          (submitted_at kept if set)
    release_unsent        submitting | needs_reconcile -> planned  (surely nothing landed)
    mark_running          submitting | needs_reconcile | unresolved -> running
    mark_needs_reconcile  submitting -> needs_reconcile
    mark_unresolved       submitting | needs_reconcile -> unresolved
    mark_lost             running | downloading -> unresolved  (FLORA answers 404; run kept)
    reopen_lost           unresolved (with a run) -> running     (poll the run again)
    resubmit_unresolved   unresolved -> planned          (new attempt, new key)
    mark_downloading      running -> downloading
    mark_done             downloading -> done            (every output saved)
    finish_run            running -> done                (a run's one output, saved)
    save_output           a file saved; after the last one, mark_done's move too
    reopen_download       done -> downloading
    mark_failed           submitting | running | downloading | needs_reconcile -> failed
    retry_failed          failed -> planned              (new key: "<key>-r<attempt>")

Once a run id is known for an idempotency key it never changes, and only
``retry_failed`` and ``resubmit_unresolved`` (with a fresh key, at the user's word) take a
job that had a run back to ``planned``.  A run id belongs to one job at most, for ever
(``runs``: ``mark_running`` refuses another job's run).
Time is always passed in as ``now`` (float epoch seconds), never read here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from ..errors import LeaseLost, LedgerConflict
from ..types import JobKey, JobRecord, JobSpec, JobState, OutputRecord, RunOutput
from . import bulk, connect, outputs_sql
from . import migrate as schema
from . import moves as mv
from . import tx as sql
from .core import HAS_OUTPUTS
from .queries import LedgerQueries
from .records import (
    ATTEMPT_COLUMNS,
    charge,
    dumps,
    grouped_outputs,
    job_records,
    planned_row,
    record_of,
    request_ids,
    with_request_id,
)
from .tables import events
from .tables import jobs as jobs_table

_LOOKUP_CHUNK = (5_000, 500)  # keys per IN (...) looking for existing jobs: (other, SQLite)
_NO_ERROR: Mapping[str, Any] = {"error_code": None, "error_message": None, "error_category": None}


class Ledger(LedgerQueries):
    """The job ledger on one database; build it with :meth:`open`.

    Its upload methods (``record_uploads``, ``begin_upload``...) are in ``upload_store``,
    its reports (``counts``, ``money``, ``events``...) in ``queries``.
    """

    @classmethod
    def open(cls, url_or_path: str | Path, *, migrate: bool = True) -> Ledger:
        """Open the ledger at a path or URL, creating or migrating it unless ``migrate=False``.

        A plain path is a SQLite file (its folder is created); ``sqlite:///...``,
        ``:memory:`` and ``postgresql://...`` work too.

        Raises:
            LedgerError: not a flora-batch ledger, or the database cannot be used.
            LedgerTooNew: the ledger was written by a newer flora-batch.
        """
        target = connect.resolve(url_or_path)
        if target.sqlite_path is not None:  # look before SQLite touches the file
            found = connect.inspect_sqlite_file(target.sqlite_path)
            if found is not None:
                schema.check_revisions(found.revisions, target.display)
                schema.check_is_ledger(found.tables, found.revisions, target.display, strict=True)
        ledger = cls(connect.create(target), sqlite_path=target.sqlite_path)
        try:
            if migrate:
                with ledger._write() as conn:
                    schema.upgrade(conn, ledger.url, strict=target.is_sqlite)
            else:
                with ledger._read() as conn:
                    schema.require_head(conn, ledger.url)
        except BaseException:
            ledger.close()
            raise
        return ledger

    # -- planning and queries ----------------------------------------------------------

    def record_planned(
        self,
        jobs: Sequence[tuple[JobKey, JobSpec]],
        *,
        quoted_cost: Mapping[str, float],
        now: float,
    ) -> int:
        """Insert the jobs whose key is new, as ``planned``; return how many were new.

        Jobs already in the ledger are left exactly as they are, whatever their state.
        """
        wanted: dict[str, JobSpec] = {}
        for key, spec in jobs:
            wanted.setdefault(key, spec)
        with self._write() as conn:
            existing = _existing_keys(conn, list(wanted))
            rows = [
                planned_row(JobKey(k), s, quoted_cost.get(s.technique), now)
                for k, s in wanted.items()
                if k not in existing
            ]
            detail = dumps({"action": "record_planned"})
            planned = JobState.PLANNED.value
            logs = [
                {"job_key": r["key"], "at": now, "to_state": planned, "detail": detail}
                for r in rows
            ]
            bulk.insert_rows(conn, jobs_table, rows)
            bulk.insert_rows(conn, events, logs)
        return len(rows)

    def known_slots(self, batch: str) -> dict[JobKey, tuple[JobState, str, str | None, int]]:
        """``key -> (state, technique, row_id, row_index)`` of every job of ``batch``.

        What planning needs, in four columns: no ``JobRecord``, no JSON decoding, so a
        100,000-job batch is read in a fraction of what ``jobs()`` takes.
        """
        states = {s.value: s for s in JobState}
        with self._tx(write=False) as tx:
            rows = tx.tuples(sql.KNOWN_SLOTS, {"batch": batch})
            return {JobKey(k): (states[s], t, rid, idx) for k, s, t, rid, idx in rows}

    def get(self, key: JobKey) -> JobRecord:
        """The job with this key, its outputs filled in.

        Raises:
            LedgerConflict: no job has this key.
        """
        with self._tx(key, write=False, single=True) as tx:
            return self._get(tx, key)

    def jobs(
        self, batch: str | None = None, states: Iterable[JobState] | None = None
    ) -> list[JobRecord]:
        """Jobs (of ``batch``, in ``states``), ordered by row index, then technique.

        Read on the driver's cursor (``tx.py``): a resumed 100,000-job batch spent a
        third of ``run`` here, most of it in SQLAlchemy's row objects.
        """
        wanted = None if states is None else tuple(sorted({JobState(s).value for s in states}))
        params = {} if batch is None else {"batch": batch}
        with self._tx(write=False) as tx:
            # A batch alone in its ledger reads the outputs table whole, in key order,
            # instead of looking up each of its keys (3x faster for 100,000 jobs; outputs
            # of jobs added meanwhile by another batch would only be read, never used).
            scoped = wanted is not None or (
                batch is not None and next(tx.tuples(sql.OTHER_BATCH, params), None) is not None
            )
            # Outputs first, then each job row turned into its record as it is fetched:
            # 100,000 raw rows and their records were alive at once before.
            out_stmt = sql.outputs_statement(batch is not None, wanted, scoped)
            grouped = grouped_outputs(tx.tuples(out_stmt, params))
            rows = tx.tuples(sql.jobs_statement(batch is not None, wanted), params)
            return job_records(rows, grouped)

    # -- submitting --------------------------------------------------------------------

    def mark_submitting(self, key: JobKey, *, now: float, grouped: bool = False) -> JobRecord:
        """``planned -> submitting``: the create is about to leave with the current key.

        The commit is durable (on SQLite, ``synchronous=FULL``) before this returns, so
        before the create is sent: see docs/design.md, "Durability of the ledger".

        Args:
            grouped: while commits are grouped (``group_commits``), join the open group
                instead: the record is durable when ``on_commit`` says so, and the create
                must not leave before.
        """
        move = mv.MARK_SUBMITTING
        with self._tx(key, durable=True, grouped=grouped) as tx:
            row = self._row(tx, key, move.action, head=True)
            self._check(row, move)
            first = row["submitted_at"] is None
            values = {"submitted_at": now} if first else {}
            detail = {"idempotency_key": row["idempotency_key"], "first_send": first}
            return self._record(tx, self._guarded(tx, key, move, now, values, detail))

    def check_lease(self, key: JobKey, *, now: float) -> None:
        """LeaseLost unless this worker holds ``key``'s lease now (a cluster worker's fence,
        read right before a create: a worker whose lease lapsed must not buy anything).

        A ledger that is not a cluster worker's (``worker_id`` None) holds every job.
        """
        if self.worker_id is None:
            return
        with self._tx(key, write=False, single=True) as tx:
            row = self._row(tx, key, "create a run", head=True)
        lease = row["lease_until"]
        if lease is None or lease <= now:
            raise LeaseLost(
                f"job {key}: cannot create a run: the lease of {self.worker_id} ran out", key=key
            )

    def note_send(self, key: JobKey, *, now: float, attempt: int, grouped: bool = False) -> None:
        """A create is about to be sent again with the job's key (no state change).

        The job's ``updated_at`` becomes ``now``: so a later process knows when the last
        create of a ``submitting`` job may have left (it waits a settle after that before
        sending the key again, and looks for its run up to then).  Durable before the send,
        like ``mark_submitting`` (``grouped``: the caller waits for ``on_commit``).
        """
        with self._tx(key, durable=True, grouped=grouped) as tx:
            row = self._row(tx, key, "note_send", head=True)
            self._check(row, mv.NOTE_SEND)
            self._set(tx, key, updated_at=now)
            state = row["state"]
            self._log(tx, key, now, state, state, {"action": "send", "attempt": attempt})

    def note_request(self, key: JobKey, request_id: str) -> None:
        """Remember a request id FLORA gave for this job (no state change)."""
        with self._tx(key) as tx:
            row = self._row(tx, key, "note_request")
            ids = with_request_id(row["request_ids"], request_id)
            if ids is not None:
                self._set(tx, key, request_ids=ids)

    def mark_running(
        self,
        key: JobKey,
        run_id: str,
        *,
        now: float,
        charged_cost: float | None = None,
        request_id: str | None = None,
    ) -> JobRecord:
        """``submitting | needs_reconcile | unresolved -> running`` with ``run_id``.

        Marking a running job running again with the same run id changes nothing; with
        another run id it raises LedgerConflict (a job never has two runs per key).
        """
        move = mv.MARK_RUNNING
        with self._tx(key) as tx:
            row = self._row(tx, key, move.action, head=True)
            if row["state"] == JobState.RUNNING and row["run_id"] == run_id:
                return self._get(tx, key)  # the same news twice: nothing to do
            if row["run_id"] not in (None, run_id):
                raise LedgerConflict(
                    f"job {key}: cannot mark_running with run {run_id}: "
                    f"it already has run {row['run_id']}",
                    key=key,
                )
            self._check(row, move)
            self._own_run(tx, key, run_id, row, now)
            values = {"run_id": run_id, **_NO_ERROR, **charge(charged_cost)}
            values.update(request_ids(row, request_id))
            detail = {"run_id": run_id, "request_id": request_id}
            new = self._guarded(tx, key, move, now, values, detail, from_state=row["state"])
            return self._record(tx, new)

    @staticmethod
    def _own_run(tx: sql.Tx, key: str, run_id: str, row: Mapping[str, Any], now: float) -> None:
        """Record that ``run_id`` is this job's (``runs``); LedgerConflict if it is another's.

        A run belongs to one job at most, whatever the batch or attempt: two jobs on one
        run would be two rows with one picture, and one of them never bought.
        """
        owner = tx.first(sql.RUN_OWNER, {"r": run_id})
        if owner is not None and owner[0] != key:
            raise LedgerConflict(
                f"job {key}: cannot take run {run_id}: it belongs to job {owner[0]}", key=key
            )
        if owner is None:
            params = {"k": key, "r": run_id, "ik": row["idempotency_key"], "now": now}
            tx.run(sql.INSERT_RUN, {**params, "t": row.get("technique")})

    def release_unsent(
        self, key: JobKey, *, now: float, reason: str, forgotten: bool = False
    ) -> JobRecord:
        """``submitting | needs_reconcile -> planned``: we KNOW no run was created.

        ``submitted_at`` is cleared, unless an earlier create with the same key may have
        landed (before ``resubmit_unresolved``): that first send bounds the key's window.

        Args:
            forgotten: the run history proved that no create with this key landed, and
                FLORA has forgotten the key (its window is over): a new window begins.
        """
        with self._tx(key) as tx:
            row = self._row(tx, key, mv.RELEASE_UNSENT.action, head=True)
            self._check(row, mv.RELEASE_UNSENT)
            first = forgotten or self._first_send(tx, key)
            values = {"submitted_at": None, **_NO_ERROR} if first else dict(_NO_ERROR)
            detail = {"reason": reason, "forgotten": forgotten}
            move, state = mv.RELEASE_UNSENT, row["state"]
            return self._record(
                tx, self._guarded(tx, key, move, now, values, detail, from_state=state)
            )

    def mark_needs_reconcile(
        self,
        key: JobKey,
        *,
        now: float,
        reason: str,
        request_id: str | None = None,
        code: str | None = None,
    ) -> JobRecord:
        """``submitting -> needs_reconcile``: a run may exist for the key, its id unknown.

        ``code`` says why (kept as the job's ``error_code``, so a later process knows):
        ``idempotency_duplicate`` (FLORA said the key made a run), ``key_expired`` (the
        key may have made one, and FLORA may have forgotten it) or ``retry_refused``
        (FLORA refused a repeat of a create that may have landed).
        """
        move = mv.MARK_NEEDS_RECONCILE
        with self._tx(key) as tx:
            row = self._row(tx, key, move.action, head=True)
            self._check(row, move)
            values = {**_NO_ERROR, "error_message": reason, **request_ids(row, request_id)}
            values["error_code"] = code
            detail = {"reason": reason, "request_id": request_id, "code": code}
            return self._record(tx, self._guarded(tx, key, move, now, values, detail))

    def mark_unresolved(self, key: JobKey, *, now: float, reason: str) -> JobRecord:
        """``needs_reconcile | submitting -> unresolved``: the user has to decide."""
        values = {**_NO_ERROR, "error_message": reason}
        return self._move(key, mv.MARK_UNRESOLVED, now, values, {"reason": reason})

    def mark_lost(self, key: JobKey, *, now: float, reason: str) -> JobRecord:
        """``running | downloading -> unresolved``, keeping the run: FLORA no longer shows it.

        A poll kept answering 404 (the run is gone from this key's view: a key or
        workspace change, CONTRACT.md §4).  The run may still be paid for, so it is never
        bought again on its own: ``reopen_lost`` polls it again, ``resubmit_unresolved``
        buys it again when the user asks.
        """
        values = {"error_code": "run_not_found", "error_message": reason}
        values["error_category"] = "lost"
        with self._tx(key) as tx:
            row = self._row(tx, key, mv.MARK_LOST.action)
            self._check(row, mv.MARK_LOST)
            detail = {"reason": reason, "run_id": row["run_id"]}
            new = self._guarded(tx, key, mv.MARK_LOST, now, values, detail, from_state=row["state"])
            return self._record(tx, new)

    def reopen_lost(self, key: JobKey, *, now: float) -> JobRecord:
        """``unresolved -> running`` for a job whose run is known (``mark_lost``): poll it again."""
        return self._move(key, mv.REOPEN_LOST, now, dict(_NO_ERROR))

    def resubmit_unresolved(self, key: JobKey, *, now: float) -> JobRecord:
        """``unresolved -> planned`` as a new attempt with a new key: the user asked for it.

        The old key is known to FLORA (that is why the job is unresolved), so sending it
        again would only meet the same duplicate answer; a new purchase needs a new key.
        """
        return self._next_attempt(key, mv.RESUBMIT_UNRESOLVED, now)

    # -- results -----------------------------------------------------------------------

    def mark_downloading(
        self,
        key: JobKey,
        outputs: Sequence[RunOutput],
        *,
        now: float,
        charged_cost: float | None = None,
    ) -> JobRecord:
        """``running -> downloading``: the run completed with these outputs."""
        with self._tx(key) as tx:
            detail = {"outputs": [o.output_id for o in outputs]}
            new = self._guarded(tx, key, mv.MARK_DOWNLOADING, now, charge(charged_cost), detail)
            saved = outputs_sql.put_urls(tx, key, outputs, known_none=not new[HAS_OUTPUTS])
            return self._record(tx, new, saved)

    def refresh_output_urls(self, key: JobKey, outputs: Sequence[RunOutput]) -> JobRecord:
        """Store fresh URLs for expired ones; saved files' data is kept.

        Returns the job as it is afterwards (no need for a ``get`` after it).
        """
        with self._tx(key) as tx:
            row = self._row(tx, key, "refresh_output_urls")
            return record_of(row, outputs_sql.put_urls(tx, key, outputs))

    def save_output(
        self,
        key: JobKey,
        output_id: str,
        *,
        path: str,
        size: int,
        sha256: str,
        content_type: str | None = None,
        now: float,
    ) -> JobRecord:
        """Record that an output's file is on disk and verified; after the last one, ``done``.

        The job must be downloading.  One transaction (one commit): when every output of
        the job now has a file, the job also moves ``downloading -> done`` with
        ``mark_done``'s event.  Returns the job as it is afterwards.
        """
        file = {"path": path, "size": size, "sha256": sha256, "content_type": content_type}
        file["saved_at"] = now
        with self._tx(key) as tx:
            row, only = self._save_file(tx, mv.SAVE_OUTPUT, key, output_id, file)
            saved = outputs_sql.records(tx, key) if only is None else [only]
            if any(o.sha256 is None for o in saved):
                return record_of(row, saved)
            new = self._guarded(tx, key, mv.MARK_DONE, now, {"completed_at": now}, {})
            return self._record(tx, new, saved)

    def finish_run(
        self,
        key: JobKey,
        output: RunOutput,
        *,
        path: str,
        size: int,
        sha256: str,
        content_type: str | None = None,
        now: float,
        charged_cost: float | None = None,
    ) -> JobRecord:
        """``running -> done``: a run with one output, whose file is in place and verified.

        ``mark_downloading`` and ``save_output`` in one transaction (one event): the
        worker's usual path, when the one output of a completed run is saved at the first
        try.  Anything less (several outputs, a failed download) takes the two steps.

        Raises:
            LedgerConflict: the job is not running, or already has outputs.
        """
        with self._tx(key) as tx:
            values = {"completed_at": now, **charge(charged_cost)}
            detail = {"outputs": [output.output_id]}
            new = self._guarded(tx, key, mv.FINISH_RUN, now, values, detail)
            if new[HAS_OUTPUTS]:  # raising undoes the UPDATE and its event
                raise LedgerConflict(f"job {key}: cannot finish_run: it has outputs", key=key)
            saved = OutputRecord(
                output.output_id, output.type, output.url, path, size, sha256, content_type
            )
            params = {"k": key, "o": output.output_id, "type": output.type, "url": output.url}
            file = {"path": path, "size": size, "sha256": sha256, "content_type": content_type}
            tx.run(sql.INSERT_SAVED_OUTPUT, {**params, **file, "saved_at": now})
            return self._record(tx, new, [saved])

    def clear_output_file(self, key: JobKey, output_id: str) -> None:
        """Forget an output's file (it vanished), so it is downloaded again."""
        with self._tx(key) as tx:
            self._row(tx, key, "clear_output_file")
            outputs_sql.set_file(tx, key, output_id, dict.fromkeys(outputs_sql.FILE_COLUMNS))

    def mark_done(self, key: JobKey, *, now: float) -> JobRecord:
        """``downloading -> done``; every output must have been saved (sha256 known)."""
        with self._tx(key) as tx:
            new = self._guarded(tx, key, mv.MARK_DONE, now, {"completed_at": now}, {})
            saved = outputs_sql.records(tx, key)
            missing = [o.output_id for o in saved if o.sha256 is None]
            if missing:  # raising rolls back the UPDATE and its event
                raise LedgerConflict(
                    f"job {key}: cannot mark_done: outputs {', '.join(missing)} are not saved",
                    key=key,
                )
            return self._record(tx, new, saved)

    def reopen_download(self, key: JobKey, *, now: float) -> JobRecord:
        """``done -> downloading``: an output file is missing or corrupt on disk."""
        return self._move(key, mv.REOPEN_DOWNLOAD, now, {"completed_at": None})

    # -- failures and money ------------------------------------------------------------

    def mark_failed(
        self,
        key: JobKey,
        *,
        code: str,
        message: str,
        category: str,
        now: float,
        charged_cost: float | None = None,
    ) -> JobRecord:
        """``submitting | running | downloading | needs_reconcile -> failed``."""
        error = {"error_code": code, "error_message": message, "error_category": category}
        values = {**error, "completed_at": now, **charge(charged_cost)}
        return self._move(key, mv.MARK_FAILED, now, values, error)

    def set_charged(
        self, key: JobKey, charged_cost: float, *, now: float | None = None
    ) -> JobRecord:
        """Record a bill that arrived late, in any state (``now`` dates its event).

        Returns the job as it is afterwards (no need for a ``get`` after it).
        """
        with self._tx(key) as tx:
            row = self._row(tx, key, "set_charged")
            new = self._set(tx, key, charged_cost=charged_cost)
            detail = {
                "action": "set_charged",
                "charged_cost": charged_cost,
                "previous": row["charged_cost"],
            }
            at = row["updated_at"] if now is None else now
            self._log(tx, key, at, row["state"], row["state"], detail)
            return self._record(tx, new)

    def retry_failed(self, key: JobKey, *, now: float) -> JobRecord:
        """``failed -> planned`` as a new attempt with a new idempotency key.

        The key becomes ``f"{key}-r{attempt}"`` (attempt 2 sends ``<key>-r2``).  The
        old run id, key, request ids, bill and error go to the event log; the old bill
        stays in ``money()``'s spent total.  A burned key never comes back.
        """
        return self._next_attempt(key, mv.RETRY_FAILED, now)

    def _next_attempt(self, key: JobKey, move: mv.Move, now: float) -> JobRecord:
        """Start attempt n+1 with key ``<key>-r<n+1>``; the old attempt goes to the events."""
        with self._tx(key) as tx:
            row = self._row(tx, key, move.action)
            self._check(row, move)
            attempt = row["attempt"] + 1
            old = {k: row[k] for k in ATTEMPT_COLUMNS}
            values = {
                **dict.fromkeys(ATTEMPT_COLUMNS),
                "attempt": attempt,
                "idempotency_key": f"{key}-r{attempt}",
                "charged_before": row["charged_before"] + (row["charged_cost"] or 0.0),
                "request_ids": "[]",
            }
            detail = {"attempt": attempt, "old": {**old, "request_ids": row["request_ids"]}}
            new = self._guarded(tx, key, move, now, values, detail)
            tx.run(sql.DELETE_OUTPUTS, {"k": key})
            return self._record(tx, new, [])


def _existing_keys(conn: Connection, keys: list[str]) -> set[str]:
    found: set[str] = set()
    key = jobs_table.c.key
    size = _LOOKUP_CHUNK[conn.dialect.name == "sqlite"]
    for start in range(0, len(keys), size):
        chunk = keys[start : start + size]
        found.update(conn.execute(select(key).where(key.in_(chunk))).scalars())
    return found

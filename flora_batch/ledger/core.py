"""Transactions and the guarded state change that every ``Ledger`` transition is built on.

``LedgerCore`` holds the engine and offers:

* the runner lock, and ``close``;
* from ``session.Session``: ``_write()`` / ``_read()`` / ``_tx()`` transactions and
  grouped commits;
* ``_row()``: the job's row (``FOR UPDATE`` on PostgreSQL), refusing a job that another
  worker holds (LeaseLost: the cluster's fence);
* ``_guarded()``: ``UPDATE jobs ... WHERE key = :k AND state IN (:sources) RETURNING ...``
  (the record's columns, and whether the job has outputs: a job without any is not
  looked up again) plus one ``events`` row; if no row matched, LedgerConflict names
  expected and actual states, or the run a ``no_run`` move met (LeaseLost names the
  holder).

Statements per job on its way to ``done`` while commits are grouped: 15 in three
transitions for a run with one output (``mark_submitting``, ``mark_running``,
``finish_run``: a SAVEPOINT, the row read or not, the UPDATE, the event, a RELEASE each);
see ``bench/ledger_micro.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

from sqlalchemy import Engine

from ..errors import LeaseLost, LedgerConflict
from ..types import JobRecord, OutputRecord
from . import lock, outputs_sql
from . import tx as sql
from .moves import Move
from .records import RECORD_COLUMNS, conflict_message, dumps, job_record
from .session import Session

#: Where a transition's RETURNING row says whether the job has outputs (``tx.py``).
HAS_OUTPUTS = len(RECORD_COLUMNS)


class LedgerCore(Session):
    """Runner lock and the guarded transition; ``store.Ledger`` adds the API."""

    def __init__(self, engine: Engine, *, sqlite_path: Path | None = None) -> None:
        super().__init__(engine, sqlite_path=sqlite_path)
        self._lock: lock.RunnerLock | None = None
        #: Set by ``flora-batch worker`` (``cluster.py``): then a job changes only while this
        #: worker holds its lease (LeaseLost otherwise), and every event names the worker.
        self.worker_id: str | None = None

    def close(self) -> None:
        """Commit a group still open, release the runner lock and every connection; the
        ledger cannot be used after."""
        try:
            self.group_commits(None)
        finally:
            self._close()

    def _close(self) -> None:
        self.release_runner_lock()
        self._close_connections()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def acquire_runner_lock(self, name: str = "runner") -> None:
        """Hold the runner lock until :meth:`release_runner_lock` or :meth:`close`.

        Raises:
            LedgerBusy: another live process holds it (checked once, never waited for).
        """
        self._check_open()
        if self._lock is None:
            self._lock = lock.acquire(self._engine, self._sqlite_path, name, self.url)

    def release_runner_lock(self) -> None:
        """Let go of the runner lock if this ledger holds it."""
        if self._lock is not None:
            held, self._lock = self._lock, None
            held.release()

    # -- the guarded transition --------------------------------------------------------

    def _row(self, tx: sql.Tx, key: str, action: str, *, head: bool = False) -> dict[str, Any]:
        """The job's row, locked for this transaction; LedgerConflict if there is none.

        ``head``: only ``tx.HEAD_COLUMNS`` (enough for ``_fence``, ``_check`` and the
        transitions that follow a create).
        """
        row = tx.one(sql.LOCK_HEAD if head else sql.LOCK_JOB, {"k": key})
        if row is None:
            raise LedgerConflict(conflict_message(key, action, None, ()), key=key)
        self._fence(row, key, action)
        return row

    def _fence(self, row: Mapping[str, Any], key: str, action: str) -> None:
        """LeaseLost if this ledger is a cluster worker's and another worker holds the job."""
        if self.worker_id is not None and row["worker_id"] != self.worker_id:
            holder = row["worker_id"] or "no worker"
            message = f"job {key}: cannot {action}: {holder} holds it, not {self.worker_id}"
            raise LeaseLost(message, key=key)

    @staticmethod
    def _check(row: Mapping[str, Any], move: Move) -> None:
        """LedgerConflict unless the row allows ``move``: its state, and no run if ``no_run``."""
        run_id = row["run_id"] if move.no_run else None
        runless = move.has_run and row["run_id"] is None
        if not move.allows(row["state"]) or run_id is not None or runless:
            message = conflict_message(row["key"], move.action, row["state"], move.sources, run_id)
            if runless and move.allows(row["state"]):
                message = f"job {row['key']}: cannot {move.action}: it has no run"
            raise LedgerConflict(message, key=row["key"])

    def _save_file(
        self, tx: sql.Tx, move: Move, key: str, output_id: str, file: Mapping[str, Any]
    ) -> tuple[dict[str, Any], OutputRecord | None]:
        """Set an output's file columns if the job is downloading: the job's row, and the
        output if it is the job's only one (``outputs_sql.set_file``)."""
        row = self._row(tx, key, move.action)
        self._check(row, move)
        return row, outputs_sql.set_file(tx, key, output_id, file)

    def _guarded(
        self,
        tx: sql.Tx,
        key: str,
        move: Move,
        now: float,
        values: Mapping[str, Any],
        detail: Mapping[str, Any],
        *,
        from_state: str | None = None,
    ) -> Sequence[Any]:
        """The guarded UPDATE and its event, in ``tx``; the row ``move_statement`` returns.

        ``from_state`` (for the event) is needed only when ``move`` has several sources:
        RETURNING gives the new row, and with one source the old state is known anyway.
        """
        params = {f"set_{name}": value for name, value in values.items()}
        params["k"], params["now"], params["w"] = key, now, self.worker_id
        stmt = sql.move_statement(move, tuple(values), leased=self.worker_id is not None)
        row = tx.first(stmt, params)
        if row is None:
            self._refuse(tx, key, move)
        if from_state is None:
            assert len(move.sources) == 1, f"{move.action}: which state did it leave?"
            from_state = move.sources[0]._value_  # Enum.value is a slow descriptor
        self._log(tx, key, now, from_state, move.target._value_, {"action": move.action, **detail})
        return row

    def _refuse(self, tx: sql.Tx, key: str, move: Move) -> NoReturn:
        """Why the guarded UPDATE matched no row: no job, another worker's, or its state."""
        row = tx.one(sql.JOB_STATE, {"k": key})
        if row is None:
            raise LedgerConflict(conflict_message(key, move.action, None, ()), key=key)
        self._fence(row, key, move.action)
        self._check({**row, "key": key}, move)
        # Only another transaction's change between the UPDATE and this read gets here.
        message = conflict_message(key, move.action, row["state"], move.sources)
        raise LedgerConflict(message, key=key)

    def _move(
        self,
        key: str,
        move: Move,
        now: float,
        values: Mapping[str, Any],
        detail: Mapping[str, Any] | None = None,
    ) -> JobRecord:
        """A whole transition whose new values do not depend on the current row."""
        with self._tx(key) as tx:
            from_state = None
            if len(move.sources) > 1:  # the event names the state left
                row = self._row(tx, key, move.action)
                self._check(row, move)
                from_state = row["state"]
            new = self._guarded(tx, key, move, now, values, detail or {}, from_state=from_state)
            return self._record(tx, new)

    def _log(
        self,
        tx: sql.Tx,
        key: str,
        at: float,
        from_state: str | None,
        to_state: str | None,
        detail: Mapping[str, Any],
    ) -> None:
        """Append one event."""
        if self.worker_id is not None:
            detail = {**detail, "worker": self.worker_id}
        params = {"k": key, "at": at, "from_state": from_state, "to_state": to_state}
        params["detail"] = dumps(detail)
        tx.run(sql.LOG_EVENT, params)

    @staticmethod
    def _first_send(tx: sql.Tx, key: str) -> bool:
        """Whether the latest ``submitting`` was the first create with the current key."""
        row = tx.first(sql.LAST_SUBMITTING, {"k": key})
        return row is None or bool(json.loads(row[0]).get("first_send", True))

    @staticmethod
    def _record(
        tx: sql.Tx, row: Sequence[Any], outputs: Sequence[OutputRecord] | None = None
    ) -> JobRecord:
        """A transition's RETURNING row as a JobRecord; its outputs read unless known.

        They are known when the caller has them, or when the row says there are none.
        """
        if outputs is None:
            outputs = outputs_sql.records(tx, row[0]) if row[HAS_OUTPUTS] else ()
        return job_record(row, outputs)

    def _get(self, tx: sql.Tx, key: str) -> JobRecord:
        """The job as a JobRecord with its outputs (one statement); LedgerConflict if none."""
        rows = tx.rows(sql.JOB_RECORD, {"k": key})
        if not rows:
            raise LedgerConflict(f"job {key}: no such job in the ledger", key=key)
        width = len(RECORD_COLUMNS)
        found = [OutputRecord(*r[width:]) for r in rows if r[width] is not None]
        return job_record(rows[0], found)

    @staticmethod
    def _set(tx: sql.Tx, key: str, **values: Any) -> Sequence[Any]:
        """Change columns of a job without a state change; its row as ``_guarded``'s."""
        params = {f"set_{name}": value for name, value in values.items()}
        row = tx.first(sql.set_statement(tuple(values)), {**params, "k": key})
        if row is None:  # callers have locked the row: only a bug gets here
            raise LedgerConflict(f"job {key}: no such job in the ledger", key=key)
        return row

"""Every run id the ledger ever saw, each owned by one job: the ``runs`` table.

Reconciliation must never adopt a run that some job already has, in any batch of the
ledger or in an earlier attempt of its own (``retry_failed`` and ``resubmit_unresolved``
move a job's run id to the event log).  ``runs`` keeps them all, keyed by run id, so a
run id belongs to one job at most: a second job naming it is a conflict, not a merge.

The upgrade fills it from ``jobs.run_id`` and from the old attempts in ``events``.  A run
id two jobs share (the bug this table prevents) is kept once, under the first job by key.

Revision ID: 0004_runs
Revises: 0003_uploads
Create Date: 2026-12-06
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_runs"
down_revision: str | Sequence[str] | None = "0003_uploads"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``runs`` and fill it from the jobs and their old attempts."""
    runs = op.create_table(
        "runs",
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("job_key", sa.String(), nullable=False),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.Column("technique", sa.String(), nullable=True),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_runs")),
    )
    op.create_index(op.f("ix_runs_job_key"), "runs", ["job_key"], unique=False)
    conn = op.get_bind()
    seen: dict[str, dict[str, object]] = {}
    jobs = conn.execute(
        sa.text(
            "SELECT key, run_id, idempotency_key, technique, updated_at FROM jobs "
            "WHERE run_id IS NOT NULL ORDER BY key"
        )
    )
    for key, run_id, ikey, technique, at in jobs:
        seen.setdefault(run_id, _row(run_id, key, ikey, technique, at))
    olds = conn.execute(
        sa.text("SELECT job_key, at, detail FROM events WHERE detail LIKE '%\"old\"%' ORDER BY id")
    )
    for key, at, detail in olds:
        old = _old_attempt(detail)
        run_id = old.get("run_id") if old else None
        if key and isinstance(run_id, str) and run_id:
            seen.setdefault(run_id, _row(run_id, key, old.get("idempotency_key"), None, at))
    if seen:
        op.bulk_insert(runs, list(seen.values()))


def _row(run_id: str, key: str, ikey: object, technique: object, at: object) -> dict[str, object]:
    return {
        "run_id": run_id,
        "job_key": key,
        "idempotency_key": ikey if isinstance(ikey, str) else None,
        "technique": technique if isinstance(technique, str) else None,
        "seen_at": float(at) if isinstance(at, int | float) else 0.0,
    }


def _old_attempt(detail: str) -> dict[str, object] | None:
    """The ``old`` attempt an event's detail records, if it is one."""
    try:
        value = json.loads(detail)
    except ValueError:
        return None
    old = value.get("old") if isinstance(value, dict) else None
    return old if isinstance(old, dict) else None


def downgrade() -> None:
    """Drop what 0004_runs created."""
    op.drop_index(op.f("ix_runs_job_key"), table_name="runs")
    op.drop_table("runs")

"""The first ledger schema: jobs, outputs, events, meta.

Revision ID: 0001
Revises:
Create Date: 2025-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the four ledger tables and their indexes."""
    op.create_table(
        "jobs",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("idempotency_key", sa.String(), nullable=False),
        sa.Column("batch", sa.String(), nullable=False),
        sa.Column("technique", sa.String(), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        sa.Column("row_id", sa.String(), nullable=True),
        sa.Column("occurrence", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("source", sa.String(), server_default=sa.text("''"), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("row", sa.Text(), nullable=False),
        sa.Column("output_name", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("quoted_cost", sa.Float(), nullable=True),
        sa.Column("charged_cost", sa.Float(), nullable=True),
        sa.Column("charged_before", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("error_code", sa.String(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_category", sa.String(), nullable=True),
        sa.Column("request_ids", sa.Text(), server_default=sa.text("'[]'"), nullable=False),
        sa.Column("submitted_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("completed_at", sa.Float(), nullable=True),
        sa.Column("worker_id", sa.String(), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
    )
    op.create_index(op.f("ix_jobs_batch_state"), "jobs", ["batch", "state"], unique=False)
    op.create_index(op.f("ix_jobs_run_id"), "jobs", ["run_id"], unique=False)
    op.create_table(
        "outputs",
        sa.Column("job_key", sa.String(), nullable=False),
        sa.Column("output_id", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(), nullable=True),
        sa.Column("content_type", sa.String(), nullable=True),
        sa.Column("saved_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["job_key"], ["jobs.key"], name=op.f("fk_outputs_job_key_jobs")),
        sa.PrimaryKeyConstraint("job_key", "output_id", name=op.f("pk_outputs")),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("job_key", sa.String(), nullable=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("from_state", sa.String(), nullable=True),
        sa.Column("to_state", sa.String(), nullable=True),
        sa.Column("detail", sa.Text(), server_default=sa.text("'{}'"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_job_key"), "events", ["job_key"], unique=False)
    op.create_table(
        "meta",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_meta")),
    )


def downgrade() -> None:
    """Drop everything 0001 created."""
    op.drop_table("meta")
    op.drop_index(op.f("ix_events_job_key"), table_name="events")
    op.drop_table("events")
    op.drop_table("outputs")
    op.drop_index(op.f("ix_jobs_run_id"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_batch_state"), table_name="jobs")
    op.drop_table("jobs")

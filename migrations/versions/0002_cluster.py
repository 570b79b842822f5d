"""Many workers on one shared ledger: batches, cluster-wide pacing, jobs by worker.

``flora-batch submit`` stores in ``batches`` what a worker needs without the manifest
(results location, max_cost, concurrency, submit rate, technique schemas); ``pacing``
holds each batch's cluster-wide in-flight limit and create pacing.  The jobs table
already had ``worker_id`` and ``lease_until``; they get an index, for lease renewal.

Revision ID: 0002_cluster
Revises: 0001
Create Date: 2025-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_cluster"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``batches`` and ``pacing``; index ``jobs.worker_id``."""
    op.create_table(
        "batches",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("results", sa.Text(), nullable=False),
        sa.Column("max_cost", sa.Float(), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("submit_rate", sa.Float(), nullable=False),
        sa.Column("techniques", sa.Text(), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_batches")),
    )
    op.create_table(
        "pacing",
        sa.Column("batch", sa.String(), nullable=False),
        sa.Column("in_flight_limit", sa.Integer(), nullable=False),
        sa.Column("max_limit", sa.Integer(), nullable=False),
        sa.Column("streak", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_submit_at", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("paused_until", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["batch"], ["batches.name"], name=op.f("fk_pacing_batch_batches")),
        sa.PrimaryKeyConstraint("batch", name=op.f("pk_pacing")),
    )
    op.create_index(op.f("ix_jobs_worker_id"), "jobs", ["worker_id"], unique=False)


def downgrade() -> None:
    """Drop what 0002_cluster created."""
    op.drop_index(op.f("ix_jobs_worker_id"), table_name="jobs")
    op.drop_table("pacing")
    op.drop_table("batches")

"""Input files as FLORA assets: the uploads table, one row per distinct file.

Revision ID: 0003_uploads
Revises: 0002_cluster
Create Date: 2025-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_uploads"
down_revision: str | Sequence[str] | None = "0002_cluster"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``uploads`` and its index on ``state``."""
    op.create_table(
        "uploads",
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("file_name", sa.String(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("content_type", sa.String(), nullable=True),
        sa.Column("workspace_id", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("idempotency_key", sa.String(), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("via", sa.String(), nullable=True),
        sa.Column("step", sa.String(), nullable=True),
        sa.Column("asset_id", sa.String(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("ready_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_uploads")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_uploads_idempotency_key")),
    )
    op.create_index(op.f("ix_uploads_state"), "uploads", ["state"], unique=False)


def downgrade() -> None:
    """Drop what 0003_uploads created."""
    op.drop_index(op.f("ix_uploads_state"), table_name="uploads")
    op.drop_table("uploads")

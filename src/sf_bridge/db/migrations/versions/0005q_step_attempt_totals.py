"""step attempts: totals for /metrics, and a count of pruned attempts on the kept ones

Revision ID: 0005q
Revises: 0005k
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005q"
down_revision = "0005k"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("step_attempts") as batch:
        batch.add_column(
            sa.Column("pruned_before", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "step_attempt_totals",
        sa.Column("step", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("timed", sa.BigInteger(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("buckets", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("step", "outcome"),
    )
    op.create_table(
        "step_attempt_rollup",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("folded_to", sa.BigInteger(), nullable=False),
        sa.Column("folded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("step_attempt_rollup")
    op.drop_table("step_attempt_totals")
    with op.batch_alter_table("step_attempts") as batch:
        batch.drop_column("pruned_before")

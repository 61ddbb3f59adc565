"""reconciliation: the reports of `sf-bridge reconcile`, the newest shown by the console

Revision ID: 0005k
Revises: 0005i
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005k"
down_revision = "0005i"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconcile_reports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("mismatches", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
    )
    op.create_index("ix_reconcile_reports_finished_at", "reconcile_reports", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_reconcile_reports_finished_at", table_name="reconcile_reports")
    op.drop_table("reconcile_reports")

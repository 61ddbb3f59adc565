"""the payment state each card deal's opportunity was last told

Revision ID: 0007c
Revises: 0006i
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007c"
down_revision = "0006i"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deals") as batch:
        batch.add_column(sa.Column("payment_reported", sa.String(length=32), nullable=True))
        batch.create_index("ix_deals_payment_reported", ["payment_reported"])
    # Deals written back already told the state they had then: a paid deal whose report was
    # still due (writeback_pending) was told it awaited the payment, so it is reported again.
    op.execute(
        "UPDATE deals SET payment_reported = CASE "
        "WHEN status = 'done' AND payment_state = 'paid' AND writeback_pending "
        "THEN 'awaiting_payment' ELSE payment_state END "
        "WHERE payment_state IS NOT NULL AND written_back_at IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("deals") as batch:
        batch.drop_index("ix_deals_payment_reported")
        batch.drop_column("payment_reported")

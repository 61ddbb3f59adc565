"""a card deal's payment state on the deal; grants waiting for the first payment

Revision ID: 0006i
Revises: 0006a
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006i"
down_revision = "0006f"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deals") as batch:
        batch.add_column(sa.Column("payment_state", sa.String(length=32), nullable=True))
    with op.batch_alter_table("entitlement_grants") as batch:
        batch.add_column(
            sa.Column("pending", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("entitlement_grants") as batch:
        batch.drop_column("pending")
    with op.batch_alter_table("deals") as batch:
        batch.drop_column("payment_state")

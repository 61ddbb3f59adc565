"""entitlements: each grant records how its feature's grants combine (sum, max, any)

Revision ID: 0004h
Revises: 0004b
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004h"
down_revision = "0004b"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("entitlement_grants") as batch:
        batch.add_column(
            sa.Column("combine", sa.String(length=8), nullable=False, server_default="sum")
        )
    # Grants made before the rule was recorded combined as their kind did: flags any, else sum.
    op.execute("UPDATE entitlement_grants SET combine = 'any' WHERE kind = 'flag'")


def downgrade() -> None:
    with op.batch_alter_table("entitlement_grants") as batch:
        batch.drop_column("combine")

"""deals: index the console's grouping of parked deals by error code

Revision ID: 0005i
Revises: 0005j
"""

from __future__ import annotations

from alembic import op

revision = "0005i"
down_revision = "0005j"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deals_status_error_code", "deals", ["status", "last_error_code"])


def downgrade() -> None:
    op.drop_index("ix_deals_status_error_code", table_name="deals")

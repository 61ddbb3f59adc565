"""contract dates: a deal's subscription schedule and contract start; grants valid from a
date until a date, one per phase of a ramp

Revision ID: 0006f
Revises: 0005q
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006f"
down_revision = "0006a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deals") as batch:
        batch.add_column(sa.Column("stripe_schedule_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("contract_start_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("entitlement_grants") as batch:
        batch.add_column(sa.Column("valid_from", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("phase", sa.Integer(), nullable=False, server_default="0"))
        batch.drop_constraint("uq_grant_deal_feature", type_="unique")
        batch.create_unique_constraint(
            "uq_grant_deal_feature_phase", ["deal_id", "feature", "phase"]
        )


def downgrade() -> None:
    with op.batch_alter_table("entitlement_grants") as batch:
        batch.drop_constraint("uq_grant_deal_feature_phase", type_="unique")
        batch.create_unique_constraint("uq_grant_deal_feature", ["deal_id", "feature"])
        batch.drop_column("phase")
        batch.drop_column("valid_until")
        batch.drop_column("valid_from")
    with op.batch_alter_table("deals") as batch:
        batch.drop_column("contract_start_at")
        batch.drop_column("stripe_schedule_id")

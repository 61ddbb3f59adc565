"""the account's lease and the Stripe marks on the deal row; provisioning_locks dropped

Revision ID: 0006a
Revises: 0005q
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006a"
down_revision = "0005q"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deals") as batch:
        batch.add_column(sa.Column("account_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("stripe_requested", sa.String(length=128), nullable=True))
        batch.create_index("ix_deals_customer_id", ["customer_id"])
    with op.batch_alter_table("customers") as batch:
        batch.add_column(
            sa.Column("create_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
    # Every Stripe step that may have reached Stripe before this revision has its attempt row;
    # carry that over to the marks that replace the lookup.
    op.execute(
        "UPDATE customers SET create_requested_at = CURRENT_TIMESTAMP WHERE id IN ("
        "SELECT d.customer_id FROM deals d JOIN step_attempts a ON a.deal_id = d.id "
        "WHERE a.step = 'customer' AND d.customer_id IS NOT NULL)"
    )
    for step in ("customer", "subscription", "invoice"):
        op.execute(
            "UPDATE deals SET stripe_requested = "
            f"COALESCE(stripe_requested || ',', '') || '{step}' WHERE id IN ("
            f"SELECT deal_id FROM step_attempts WHERE step = '{step}')"
        )
    op.drop_table("provisioning_locks")


def downgrade() -> None:
    op.create_table(
        "provisioning_locks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("locked_by", sa.String(length=64), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_provisioning_locks_locked_by", "provisioning_locks", ["locked_by"])
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("create_requested_at")
    with op.batch_alter_table("deals") as batch:
        batch.drop_index("ix_deals_customer_id")
        batch.drop_column("stripe_requested")
        batch.drop_column("account_until")

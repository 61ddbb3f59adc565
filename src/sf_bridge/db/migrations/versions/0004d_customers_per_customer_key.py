"""customers: one row per customer key (identifier value and currency), provisioning locks

A Stripe customer bills in one currency, and the mapping's `customer.identifier` says which
deals share one. So `customers` is unique on `customer_key` instead of `sf_account_id` (kept,
indexed: the account whose deal made the row), and the per-account lease moves, with a lease
per customer, to `provisioning_locks`. Usage is counted per account (`usage_counters` and
`usage_records` keyed by `sf_account_id` instead of a customer), since an account may now
have several customers.

Existing rows keep their Stripe customer: each gets the key the default split
(`identifier_and_currency`) gives its deals, from the identifier value it stored (the account
id when none) and the currency its deals are billed in. Deals not billed yet get their key
in their stored plan; one parked on a customer of another currency (Stripe refused it there)
goes back to the customer step. Two accounts that stored the same identifier value
each had their own row; the first keeps the key, the next ones a key of their own account.

Revision ID: 0004d
Revises: 0004h
Create Date: 2026-12-01 20:40:00
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004d"
down_revision = "0004h"
branch_labels = None
depends_on = None

_customers = sa.table(
    "customers",
    sa.column("id", sa.Integer),
    sa.column("sf_account_id", sa.String),
    sa.column("customer_key", sa.String),
)
_deals = sa.table(
    "deals",
    sa.column("id", sa.Integer),
    sa.column("customer_id", sa.Integer),
    sa.column("plan", sa.JSON),
    sa.column("stripe_subscription_id", sa.String),
    sa.column("stripe_customer_id", sa.String),
    sa.column("current_step", sa.String),
    sa.column("status", sa.String),
)


def _key(identifier: str, currency: str | None) -> str:
    # As sf_bridge.plan.customer_key computed it when this revision was written.
    key = f"{identifier}/{currency.upper()}" if currency else identifier
    return key if len(key) <= 255 else f"sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def _plan(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else None


def _currency(plan: dict[str, Any] | None) -> str | None:
    if not plan:
        return None
    billing = plan.get("billing") or {}
    if billing.get("currency"):
        return str(billing["currency"])
    items = plan.get("items") or []
    return str(items[0]["currency"]) if items and items[0].get("currency") else None


def _assign_keys(conn: sa.Connection) -> None:
    # A row's currency: that of its first deal with a subscription (Stripe fixed the
    # customer's currency then), else of its first billed deal, else of its first deal.
    currencies: dict[int, tuple[int, str]] = {}
    for customer_id, raw, subscription in conn.execute(
        sa.select(_deals.c.customer_id, _deals.c.plan, _deals.c.stripe_subscription_id)
        .where(_deals.c.customer_id.is_not(None))
        .order_by(_deals.c.id)
    ):
        plan = _plan(raw)
        currency = _currency(plan)
        rank = 2 if subscription else 1 if plan and plan.get("billing") else 0
        known = currencies.get(customer_id)
        if currency and (known is None or rank > known[0]):
            currencies[customer_id] = (rank, currency)
    taken: dict[str, int] = {}
    rows = conn.execute(
        sa.select(_customers.c.id, _customers.c.sf_account_id, _customers.c.customer_key).order_by(
            _customers.c.id
        )
    ).all()
    for row_id, account, stored in rows:
        currency = currencies[row_id][1] if row_id in currencies else None
        key = _key((stored or account).strip(), currency)
        if key in taken:
            key = _key(account, currency)
        if key in taken:
            key = _key(f"{account}#{row_id}", currency)
        taken[key] = row_id
        conn.execute(
            sa.update(_customers).where(_customers.c.id == row_id).values(customer_key=key)
        )
    keys = {row_id: key for key, row_id in taken.items()}
    # Deals not billed yet get their key too. One tied to a customer of another key (a deal
    # in a second currency, parked because Stripe refused it on the account's customer) goes
    # back to the customer step, which finds or creates the customer of its key.
    for deal_id, raw, customer_id, step, status in conn.execute(
        sa.select(
            _deals.c.id, _deals.c.plan, _deals.c.customer_id, _deals.c.current_step, _deals.c.status
        ).where(_deals.c.stripe_subscription_id.is_(None), _deals.c.plan.is_not(None))
    ).all():
        plan = _plan(raw)
        customer = (plan or {}).get("customer")
        if not plan or not isinstance(customer, dict):
            continue
        identifier = customer.get("customer_key") or customer.get("account_id")
        if not identifier:
            continue
        key = _key(str(identifier).strip(), _currency(plan))
        customer["customer_key"] = key
        values: dict[str, Any] = {"plan": plan}
        if customer_id is not None and keys.get(customer_id) != key:
            values.update(customer_id=None, stripe_customer_id=None)
            if step == "subscription":
                values["current_step"] = "customer"
            if status == "customer_ready":
                values["status"] = "mapped"
        conn.execute(sa.update(_deals).where(_deals.c.id == deal_id).values(**values))


def upgrade() -> None:
    conn = op.get_bind()
    _assign_keys(conn)
    sqlite = conn.dialect.name == "sqlite"
    with op.batch_alter_table(
        "customers",
        # SQLite names the old unnamed constraint by this convention so it can be dropped.
        naming_convention={"uq": "uq_%(table_name)s_%(column_0_name)s"},
    ) as batch:
        batch.drop_constraint(
            "uq_customers_sf_account_id" if sqlite else "customers_sf_account_id_key",
            type_="unique",
        )
        batch.alter_column("customer_key", existing_type=sa.String(length=255), nullable=False)
        batch.create_unique_constraint("uq_customers_customer_key", ["customer_key"])
        batch.create_index("ix_customers_sf_account_id", ["sf_account_id"])
        batch.drop_column("locked_by")  # the leases are in provisioning_locks now
        batch.drop_column("locked_until")
    _usage_by_account("usage_counters", "uq_usage_counter", ["feature", "period"])
    _usage_by_account("usage_records", "uq_usage_record_key", ["idempotency_key"])
    op.create_table(
        "provisioning_locks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("locked_by", sa.String(length=64), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_provisioning_locks_locked_by", "provisioning_locks", ["locked_by"])


def _usage_by_account(table: str, unique: str, columns: list[str]) -> None:
    with op.batch_alter_table(table) as batch:
        batch.add_column(sa.Column("sf_account_id", sa.String(length=18), nullable=True))
    op.execute(
        f"UPDATE {table} SET sf_account_id = "
        f"(SELECT c.sf_account_id FROM customers c WHERE c.id = {table}.customer_id)"
    )
    with op.batch_alter_table(
        table,
        naming_convention={"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"},
    ) as batch:
        batch.drop_constraint(unique, type_="unique")
        if op.get_bind().dialect.name == "sqlite":
            batch.drop_constraint(f"fk_{table}_customer_id_customers", type_="foreignkey")
        else:
            batch.drop_constraint(f"{table}_customer_id_fkey", type_="foreignkey")
        batch.drop_column("customer_id")
        batch.alter_column("sf_account_id", existing_type=sa.String(length=18), nullable=False)
        batch.create_unique_constraint(unique, ["sf_account_id", *columns])
        # As models.id_18_check: the account id in its 18-character form only.
        batch.create_check_constraint(
            f"ck_{table}_sf_account_id_18",
            "length(sf_account_id) = 18 AND "
            "substr(sf_account_id, 16, 3) = upper(substr(sf_account_id, 16, 3))",
        )


def downgrade() -> None:
    """Back to one row per account: fails while an account has more than one customer.
    Usage counted since the upgrade is not kept."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.drop_index("ix_provisioning_locks_locked_by", table_name="provisioning_locks")
    op.drop_table("provisioning_locks")
    for table, unique, columns in (
        ("usage_counters", "uq_usage_counter", ["feature", "period"]),
        ("usage_records", "uq_usage_record_key", ["idempotency_key"]),
    ):
        op.execute(f"DELETE FROM {table}")
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"ck_{table}_sf_account_id_18", type_="check")
            batch.drop_constraint(unique, type_="unique")
            batch.drop_column("sf_account_id")
            batch.add_column(sa.Column("customer_id", sa.Integer(), nullable=False))
            batch.create_foreign_key(
                f"fk_{table}_customer_id_customers" if sqlite else f"{table}_customer_id_fkey",
                "customers",
                ["customer_id"],
                ["id"],
            )
            batch.create_unique_constraint(unique, ["customer_id", *columns])
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("locked_by", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True))
        batch.drop_index("ix_customers_sf_account_id")
        batch.drop_constraint("uq_customers_customer_key", type_="unique")
        batch.alter_column("customer_key", existing_type=sa.String(length=255), nullable=True)
        batch.create_unique_constraint(
            "uq_customers_sf_account_id" if sqlite else "customers_sf_account_id_key",
            ["sf_account_id"],
        )

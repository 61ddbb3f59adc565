"""customers: one row per customer key (identifier value and currency), provisioning locks

A Stripe customer bills in one currency, and the mapping's `customer.identifier` says which
deals share one. So `customers` is unique on `customer_key` instead of `sf_account_id` (kept,
indexed: the account whose deal made the row), and the per-account lease moves, with a lease
per customer, to `provisioning_locks`. Usage is counted per account (`usage_counters` and
`usage_records` keyed by `sf_account_id` instead of a customer), since an account may now
have several customers.

Existing rows keep their Stripe customer: each gets the key the default split
(`identifier_and_currency`) gives its deals, from the identifier value it stored (the account
id when none) and a currency, the first of these that is known:
  1. the currency of the row's deals (linked to it, or billed to its Stripe customer): of
     one with a subscription (Stripe fixed the customer's currency then), else of one
     billed, else priced, else the currency of its stored opportunity (CurrencyIsoCode, or
     the org's currency the fetch recorded), as the mapping engine takes it;
  2. the same of the other deals of the row's account;
  3. what a new deal naming no currency is billed in: the org's currency recorded with any
     stored opportunity, else the currency the database bills in most (in an org without
     multi-currency, the only one).
A row none of this tells a currency for (a database billing nothing) keeps the bare
identifier, the key of the `identifier` split.

Deals not billed yet get their key in their stored plan, from their own currency as the
engine takes it (custom plans bill nothing: their opportunity's currency); one without any
keeps its customer's key. A deal whose key is not its customer's (a deal in a second
currency, parked because Stripe refused it there) goes back to the customer step, but only
while nothing of it is on that customer: before or at the customer step, or parked before its
subscription exists. A finished deal (a custom plan's has no subscription) keeps its customer.
Two accounts that stored the same identifier value each had their own row; the first keeps
the key, the next ones a key of their own account.

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
    sa.column("stripe_customer_id", sa.String),
)
_deals = sa.table(
    "deals",
    sa.column("id", sa.Integer),
    sa.column("account_id", sa.String),
    sa.column("customer_id", sa.Integer),
    sa.column("opportunity", sa.JSON),
    sa.column("plan", sa.JSON),
    sa.column("stripe_subscription_id", sa.String),
    sa.column("stripe_customer_id", sa.String),
    sa.column("current_step", sa.String),
    sa.column("status", sa.String),
)

# Where the fetch records the currency of an org without multi-currency (crm.port).
_ORG_CURRENCY = "sf_bridge:OrgCurrencyIsoCode"
# A deal may be moved to another customer only while nothing of it is on its customer yet:
# before or at its customer step, or parked before its subscription exists.
_NOT_LINKED_YET = ("received", "fetched", "mapped", "customer_ready")
_PAUSED = ("retrying", "needs_attention")
_STEPS_BEFORE_BILLING = ("fetch", "map", "customer", "subscription")


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


def _opportunity_currency(snapshot: Any) -> str | None:
    """The currency the mapping engine bills the stored opportunity in, when it says:
    its CurrencyIsoCode, else the org's currency recorded with it."""
    record = _plan(snapshot)
    for field in ("CurrencyIsoCode", _ORG_CURRENCY):
        value = (record or {}).get(field)
        if isinstance(value, str) and value.strip():
            return value.strip().lower()
    return None


def _rank(row: Any, plan: dict[str, Any] | None) -> tuple[int, str | None]:
    """How surely a deal tells its customer's currency: subscribed (Stripe fixed the
    customer's currency then), billed, priced, or only its opportunity's currency."""
    currency = _currency(plan)
    if currency is None:
        return 0, _opportunity_currency(row.opportunity)
    if row.stripe_subscription_id:
        return 3, currency
    return (2 if plan and plan.get("billing") else 1), currency


def _best(found: dict[Any, tuple[int, str]], where: Any, rank: tuple[int, str | None]) -> None:
    known = found.get(where)
    if rank[1] and (known is None or rank[0] > known[0]):
        found[where] = (rank[0], rank[1])


def _detachable(status: str | None, step: str | None) -> bool:
    return status in _NOT_LINKED_YET or (status in _PAUSED and step in _STEPS_BEFORE_BILLING)


def _assign_keys(conn: sa.Connection) -> None:
    all_deals = conn.execute(
        sa.select(
            _deals.c.id,
            _deals.c.account_id,
            _deals.c.customer_id,
            _deals.c.opportunity,
            _deals.c.plan,
            _deals.c.stripe_subscription_id,
            _deals.c.stripe_customer_id,
            _deals.c.current_step,
            _deals.c.status,
        ).order_by(_deals.c.id)
    ).all()
    by_row: dict[int, tuple[int, str]] = {}
    by_stripe: dict[str, tuple[int, str]] = {}
    by_account: dict[str, tuple[int, str]] = {}
    counts: dict[str, int] = {}
    org_currency: str | None = None
    for deal in all_deals:
        rank = _rank(deal, _plan(deal.plan))
        if deal.customer_id is not None:
            _best(by_row, deal.customer_id, rank)
        if deal.stripe_customer_id:
            _best(by_stripe, deal.stripe_customer_id, rank)
        if deal.account_id:
            _best(by_account, deal.account_id, rank)
        if rank[1]:
            counts[rank[1]] = counts.get(rank[1], 0) + 1
        org = (_plan(deal.opportunity) or {}).get(_ORG_CURRENCY)
        if org_currency is None and isinstance(org, str) and org.strip():
            org_currency = org.strip().lower()
    # What a new deal naming no currency is billed in: the org's recorded currency, else the
    # currency the database bills in most (the only one, in an org without multi-currency).
    usual = org_currency or (min(counts, key=lambda c: (-counts[c], c)) if counts else None)

    def row_currency(row_id: int, account: str, stripe_id: str | None) -> str | None:
        known = (
            by_row.get(row_id)
            or (by_stripe.get(stripe_id) if stripe_id else None)
            or by_account.get(account)
        )
        return known[1] if known else usual

    taken: dict[str, int] = {}
    rows = conn.execute(
        sa.select(
            _customers.c.id,
            _customers.c.sf_account_id,
            _customers.c.customer_key,
            _customers.c.stripe_customer_id,
        ).order_by(_customers.c.id)
    ).all()
    first_of_account: dict[str, int] = {}
    for row_id, account, stored, stripe_id in rows:
        currency = row_currency(row_id, account, stripe_id)
        key = _key((stored or account).strip(), currency)
        if key in taken:
            key = _key(account, currency)
        if key in taken:
            key = _key(f"{account}#{row_id}", currency)
        taken[key] = row_id
        first_of_account.setdefault(account, row_id)
        conn.execute(
            sa.update(_customers).where(_customers.c.id == row_id).values(customer_key=key)
        )
    keys = {row_id: key for key, row_id in taken.items()}
    # Deals not billed yet get their key too. One tied to a customer of another key (a deal
    # in a second currency, parked because Stripe refused it on the account's customer) goes
    # back to the customer step, which finds or creates the customer of its key, as long as
    # nothing of it is on that customer; a finished deal keeps its customer and its key.
    for deal in all_deals:
        plan = _plan(deal.plan)
        if deal.stripe_subscription_id or not plan:
            continue
        customer = plan.get("customer")
        if not isinstance(customer, dict):
            continue
        identifier = customer.get("customer_key") or customer.get("account_id")
        if not identifier:
            continue
        linked = keys.get(deal.customer_id) if deal.customer_id is not None else None
        currency = _currency(plan) or _opportunity_currency(deal.opportunity)
        if currency is not None:
            key = _key(str(identifier).strip(), currency)
        elif linked is not None:
            key = linked  # no currency of its own: the customer it has
        elif deal.account_id in first_of_account:
            key = keys[first_of_account[deal.account_id]]  # the customer its account has
        else:
            key = _key(str(identifier).strip(), usual)
        values: dict[str, Any] = {}
        if linked is not None and linked != key:
            if _detachable(deal.status, deal.current_step):
                values.update(customer_id=None, stripe_customer_id=None)
                if deal.current_step == "subscription":
                    values["current_step"] = "customer"
                if deal.status == "customer_ready":
                    values["status"] = "mapped"
            else:
                key = linked
        customer["customer_key"] = key
        values["plan"] = plan
        conn.execute(sa.update(_deals).where(_deals.c.id == deal.id).values(**values))


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

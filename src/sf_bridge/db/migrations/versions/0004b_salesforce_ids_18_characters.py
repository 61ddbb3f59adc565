"""Salesforce ids are stored in their 18-character form only

Revision ID: 0004b
Revises: 0003
Create Date: 2026-12-01 20:40:00

Rows written under a 15-character id (an opportunity given with `provision --file`, an
account with it) get the 18-character form, in the keys and in the stored snapshots and
plans, and so does a customer key (`customers.customer_key`, the plan's
`customer.customer_key`) that is the account's id, as new deals compute it; other identifier
values are kept as they are. Then CHECK constraints keep every opportunity and account id in
that form (18 characters, the suffix in upper case), so one record can no longer be held under
two ids. When a record already is held twice, or a key is
no Salesforce id at all, the upgrade changes nothing and names the rows a person must resolve.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from sf_bridge.crm.soql import is_salesforce_id, to_18
from sf_bridge.errors import ConfigurationError

revision = "0004b"
down_revision = "0003"
branch_labels = None
depends_on = None


def _check(column: str) -> str:
    # The text of models.id_18_check, fixed here as this revision writes it: 18 characters,
    # the suffix in upper case (a lower-case suffix names the same record a second time).
    return f"length({column}) = 18 AND substr({column}, 16, 3) = upper(substr({column}, 16, 3))"


# The same constraints as in models.py.
CHECKS = {
    "deals": (
        ("ck_deals_opportunity_id_18", _check("opportunity_id")),
        ("ck_deals_account_id_18", _check("account_id")),
    ),
    "customers": (("ck_customers_sf_account_id_18", _check("sf_account_id")),),
}

deals = sa.table(
    "deals",
    sa.column("id", sa.Integer),
    sa.column("opportunity_id", sa.String),
    sa.column("account_id", sa.String),
    sa.column("opportunity", sa.JSON),
    sa.column("plan", sa.JSON),
)
customers = sa.table(
    "customers",
    sa.column("id", sa.Integer),
    sa.column("sf_account_id", sa.String),
    sa.column("customer_key", sa.String),
    sa.column("stripe_customer_id", sa.String),
)


def _id(value: Any) -> Any:
    """The 18-character form of an id; anything else as it is."""
    return to_18(value) if is_salesforce_id(value) else value


def _key(key: Any, account: Any) -> Any:
    """A customer key that is the account's id, in the 18-character form new deals compute it
    in (the Account id the intake stores); any other identifier value as it is."""
    if not isinstance(key, str) or not is_salesforce_id(key.strip()):
        return key
    if not is_salesforce_id(account) or to_18(key.strip()) != to_18(account):
        return key
    return to_18(key.strip())


def _snapshot(record: Any) -> Any:
    if not isinstance(record, dict):
        return record
    result = dict(record)
    for key in ("Id", "AccountId"):
        if key in result:
            result[key] = _id(result[key])
    if isinstance(result.get("Account"), dict) and "Id" in result["Account"]:
        result["Account"] = {**result["Account"], "Id": _id(result["Account"]["Id"])}
    return result


def _plan(plan: Any) -> Any:
    if not isinstance(plan, dict):
        return plan
    result = dict(plan)
    if "opportunity_id" in result:
        result["opportunity_id"] = _id(result["opportunity_id"])
    if isinstance(result.get("customer"), dict) and "account_id" in result["customer"]:
        customer = dict(result["customer"])
        if "customer_key" in customer:
            customer["customer_key"] = _key(customer["customer_key"], customer["account_id"])
        customer["account_id"] = _id(customer["account_id"])
        result["customer"] = customer
    return result


def _twice(rows: dict[str, list[str]], what: str) -> list[str]:
    return [
        f"{what} {' and '.join(held)} are one record, {key}"
        for key, held in sorted(rows.items())
        if len(held) > 1
    ]


def _normalise_deals(conn: sa.Connection, problems: list[str]) -> list[dict[str, Any]]:
    by_key: dict[str, list[str]] = {}
    updates = []
    for row in conn.execute(
        sa.select(
            deals.c.id,
            deals.c.opportunity_id,
            deals.c.account_id,
            deals.c.opportunity,
            deals.c.plan,
        )
    ):
        if not is_salesforce_id(row.opportunity_id):
            problems.append(f"deal {row.id} has opportunity id {row.opportunity_id!r}")
            continue
        if row.account_id is not None and not is_salesforce_id(row.account_id):
            problems.append(f"deal {row.id} has account id {row.account_id!r}")
            continue
        key = to_18(row.opportunity_id)
        by_key.setdefault(key, []).append(f"{row.id} ({row.opportunity_id})")
        change = {
            "opportunity_id": key,
            "account_id": _id(row.account_id),
            "opportunity": _snapshot(row.opportunity),
            "plan": _plan(row.plan),
        }
        if change != {k: getattr(row, k) for k in change}:
            updates.append({"deal_id": row.id, **change})
    problems.extend(_twice(by_key, "deals"))
    return updates


def _normalise_customers(conn: sa.Connection, problems: list[str]) -> list[dict[str, Any]]:
    by_key: dict[str, list[str]] = {}
    updates = []
    for row in conn.execute(
        sa.select(
            customers.c.id,
            customers.c.sf_account_id,
            customers.c.customer_key,
            customers.c.stripe_customer_id,
        )
    ):
        if not is_salesforce_id(row.sf_account_id):
            problems.append(f"customer {row.id} has account id {row.sf_account_id!r}")
            continue
        key = to_18(row.sf_account_id)
        stripe = f", Stripe {row.stripe_customer_id}" if row.stripe_customer_id else ""
        by_key.setdefault(key, []).append(f"{row.id} ({row.sf_account_id}{stripe})")
        customer_key = _key(row.customer_key, row.sf_account_id)
        if (key, customer_key) != (row.sf_account_id, row.customer_key):
            updates.append(
                {"customer_id": row.id, "sf_account_id": key, "customer_key": customer_key}
            )
    problems.extend(_twice(by_key, "customers"))
    return updates


def upgrade() -> None:
    conn = op.get_bind()
    problems: list[str] = []
    deal_updates = _normalise_deals(conn, problems)
    customer_updates = _normalise_customers(conn, problems)
    if problems:
        raise ConfigurationError(
            "The database holds Salesforce records under more than one id, or under values "
            "that are not Salesforce ids, so it cannot be limited to 18-character ids: "
            + "; ".join(problems)
            + ". Nothing was changed.",
            hint="for each record held twice keep one deal (or customer): cancel in Stripe what "
            "the other created (`sf-bridge deals show <deal>` lists it), then delete that row "
            "and the rows that refer to it (deal_events, step_attempts, entitlement_grants; for "
            "a customer its deals' customer_id, usage_counters and usage_records); remove or "
            "correct the rows whose id is no Salesforce id; then run `sf-bridge db upgrade` "
            "again.",
        )
    if deal_updates:
        conn.execute(
            deals.update()
            .where(deals.c.id == sa.bindparam("deal_id"))
            .values(
                opportunity_id=sa.bindparam("opportunity_id"),
                account_id=sa.bindparam("account_id"),
                opportunity=sa.bindparam("opportunity", type_=sa.JSON),
                plan=sa.bindparam("plan", type_=sa.JSON),
            ),
            deal_updates,
        )
    if customer_updates:
        conn.execute(
            customers.update()
            .where(customers.c.id == sa.bindparam("customer_id"))
            .values(
                sf_account_id=sa.bindparam("sf_account_id"),
                customer_key=sa.bindparam("customer_key"),
            ),
            customer_updates,
        )
    for table in ("deals", "customers"):
        with op.batch_alter_table(table) as batch:
            for name, condition in CHECKS[table]:
                batch.create_check_constraint(name, condition)


def downgrade() -> None:
    for table in ("customers", "deals"):
        with op.batch_alter_table(table) as batch:
            for name, _ in CHECKS[table]:
                batch.drop_constraint(name, type_="check")

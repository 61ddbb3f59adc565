"""Upgrading a database made when every account had one customer: existing customers keep
their Stripe customer under the key new deals compute, and usage moves to the account."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from sf_bridge.db import migrate
from sf_bridge.db.engine import make_engine, normalise_url
from tests.fixtures.database import BACKENDS, PG_ENV

BEFORE = "0004d-1"  # the revision before customers were keyed by customer key
NOW = datetime(2026, 11, 20, tzinfo=UTC)

customers = sa.table(
    "customers",
    sa.column("id", sa.Integer),
    sa.column("sf_account_id", sa.String),
    sa.column("customer_key", sa.String),
    sa.column("name", sa.String),
    sa.column("stripe_customer_id", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
deals = sa.table(
    "deals",
    sa.column("id", sa.Integer),
    sa.column("opportunity_id", sa.String),
    sa.column("account_id", sa.String),
    sa.column("status", sa.String),
    sa.column("attempts", sa.Integer),
    sa.column("source", sa.String),
    sa.column("customer_id", sa.Integer),
    sa.column("stripe_customer_id", sa.String),
    sa.column("stripe_subscription_id", sa.String),
    sa.column("current_step", sa.String),
    sa.column("plan", sa.JSON),
    sa.column("opportunity", sa.JSON),
    sa.column("writeback_pending", sa.Boolean),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
grants = sa.table(
    "entitlement_grants",
    sa.column("customer_id", sa.Integer),
    sa.column("deal_id", sa.Integer),
    sa.column("feature", sa.String),
    sa.column("kind", sa.String),
    sa.column("value", sa.BigInteger),
    sa.column("combine", sa.String),
    sa.column("source", sa.String),
    sa.column("active", sa.Boolean),
    sa.column("granted_at", sa.DateTime(timezone=True)),
)
usage_counters = sa.table(
    "usage_counters",
    sa.column("customer_id", sa.Integer),
    sa.column("feature", sa.String),
    sa.column("period", sa.String),
    sa.column("used", sa.BigInteger),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL tests need {PG_ENV}")
    url = make_url(normalise_url(base))
    name = f"sfb_migration_{os.getpid()}"
    admin = make_engine(url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _plan(account: str, key: str, currency: str | None) -> dict[str, Any]:
    billing = {"collection_method": "send_invoice", "days_until_due": 30, "interval": "year"}
    return {
        "opportunity_id": "x",
        "customer": {"account_id": account, "name": "Acme", "customer_key": key, "email": None},
        "billing": {**billing, "currency": currency} if currency else None,
        "items": [],
        "mapping_version": "v1",
    }


def _deal(
    deal_id: int,
    account: str,
    customer_id: int | None,
    plan: dict[str, Any],
    *,
    status: str = "done",
    step: str | None = None,
) -> Any:
    done = status == "done"
    return sa.insert(deals).values(
        id=deal_id,
        opportunity_id=f"006{deal_id:015d}",
        account_id=account,
        status=status,
        current_step=step,
        stripe_customer_id=f"cus_{customer_id}" if customer_id else None,
        stripe_subscription_id=f"sub_{deal_id}" if done else None,
        attempts=0,
        source="stream",
        customer_id=customer_id,
        plan=plan,
        writeback_pending=False,
        created_at=NOW,
        updated_at=NOW,
    )


def test_existing_customers_keep_their_stripe_customer_under_the_new_key(empty_url: str) -> None:
    a, b, c = "001000000000001AAA", "001000000000002AAA", "001000000000003AAA"
    migrate.upgrade(empty_url, BEFORE)
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        for row_id, account, key, stripe_id in (
            (1, a, a, "cus_a"),  # an EUR customer
            (2, b, "GROUP-1", "cus_b"),  # identifier values shared by two accounts
            (3, c, "GROUP-1", "cus_c"),
        ):
            conn.execute(
                sa.insert(customers).values(
                    id=row_id,
                    sf_account_id=account,
                    customer_key=key,
                    name="Acme",
                    stripe_customer_id=stripe_id,
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
        conn.execute(_deal(1, a, 1, _plan(a, a, "eur")))
        conn.execute(_deal(2, b, 2, _plan(b, "GROUP-1", "usd")))
        conn.execute(_deal(3, c, 3, _plan(c, "GROUP-1", "usd")))
        conn.execute(_deal(4, a, None, _plan(a, a, "eur"), status="mapped", step="customer"))
        # parked: Stripe refused a USD subscription on a's EUR customer
        conn.execute(
            _deal(5, a, 1, _plan(a, a, "usd"), status="needs_attention", step="subscription")
        )
        conn.execute(
            sa.insert(usage_counters).values(
                customer_id=1, feature="api_calls", period="2026-11", used=7, updated_at=NOW
            )
        )
    engine.dispose()

    migrate.upgrade(empty_url)
    engine = make_engine(empty_url)
    with engine.connect() as conn:
        keys = conn.execute(
            sa.text(
                "SELECT customer_key, sf_account_id, stripe_customer_id FROM customers ORDER BY id"
            )
        ).all()
        plan = conn.execute(sa.select(deals.c.plan).where(deals.c.id == 4)).scalar_one()
        parked = conn.execute(
            sa.select(
                deals.c.plan, deals.c.customer_id, deals.c.stripe_customer_id, deals.c.current_step
            ).where(deals.c.id == 5)
        ).one()
        done_plan = conn.execute(sa.select(deals.c.plan).where(deals.c.id == 1)).scalar_one()
        usage = conn.execute(sa.text("SELECT sf_account_id, used FROM usage_counters")).all()
    engine.dispose()
    assert [tuple(k) for k in keys] == [
        (f"{a}/EUR", a, "cus_a"),
        ("GROUP-1/USD", b, "cus_b"),
        (f"{c}/USD", c, "cus_c"),
    ]
    assert plan["customer"]["customer_key"] == f"{a}/EUR"  # finds cus_a, creates nothing
    # the parked USD deal gets a customer of its own currency when replayed
    assert parked[0]["customer"]["customer_key"] == f"{a}/USD"
    assert tuple(parked[1:]) == (None, None, "customer")
    assert done_plan["customer"]["customer_key"] == a  # billed deals are history, left alone
    assert [tuple(u) for u in usage] == [(a, 7)]


def _custom_plan(account: str) -> dict[str, Any]:
    return {**_plan(account, account, None), "plan_kind": "custom"}


def test_finished_custom_plan_deals_keep_their_customer_and_their_entitlements(
    empty_url: str,
) -> None:
    """A custom plan bills nothing, so its plan names no currency: the upgrade takes the
    deal's own currency as the mapping engine does, and never detaches a finished deal."""
    from sf_bridge.entitlements.view import all_entitlements

    a = "001000000000001AAA"
    migrate.upgrade(empty_url, BEFORE)
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(customers).values(
                id=1,
                sf_account_id=a,
                customer_key=a,
                name="Acme",
                stripe_customer_id="cus_1",
                created_at=NOW,
                updated_at=NOW,
            )
        )
        conn.execute(_deal(1, a, 1, _plan(a, a, "usd")))
        custom = _deal(2, a, 1, _custom_plan(a)).values(
            stripe_subscription_id=None, opportunity={"Id": "x", "CurrencyIsoCode": "USD"}
        )
        conn.execute(custom)
        # a custom deal whose snapshot names no currency either: it keeps its customer
        conn.execute(_deal(3, a, 1, _custom_plan(a)).values(stripe_subscription_id=None))
        for deal_id, feature in ((1, "sso"), (2, "premium_support"), (3, "sandbox")):
            conn.execute(
                sa.insert(grants).values(
                    customer_id=1,
                    deal_id=deal_id,
                    feature=feature,
                    kind="flag",
                    value=1,
                    combine="any",
                    source="plan",
                    active=True,
                    granted_at=NOW,
                )
            )
    engine.dispose()

    migrate.upgrade(empty_url)
    engine = make_engine(empty_url)
    with engine.connect() as conn:
        links = conn.execute(
            sa.select(deals.c.id, deals.c.customer_id, deals.c.stripe_customer_id).order_by(
                deals.c.id
            )
        ).all()
        answer = all_entitlements(conn, a, NOW)
    engine.dispose()
    assert [tuple(r) for r in links] == [(1, 1, "cus_1"), (2, 1, "cus_1"), (3, 1, "cus_1")]
    assert sorted(answer["entitlements"]) == ["premium_support", "sandbox", "sso"]


def test_earlier_stripe_attempts_become_marks_on_the_deal_and_its_customer(
    empty_url: str,
) -> None:
    """The account's lease moved to the deal row: what an earlier attempt may have sent to
    Stripe is read from marks, so the upgrade marks what the attempt rows recorded."""
    a, b = "001000000000001AAA", "001000000000002AAA"
    migrate.upgrade(empty_url, "0005q")
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        for row_id, account in ((1, a), (2, b)):
            conn.execute(
                sa.insert(customers).values(
                    id=row_id,
                    sf_account_id=account,
                    customer_key=f"{account}/USD",
                    name="Acme",
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
        conn.execute(_deal(1, a, 1, _plan(a, f"{a}/USD", "usd"), status="retrying", step="invoice"))
        conn.execute(_deal(2, b, 2, _plan(b, f"{b}/USD", "usd"), status="mapped", step="customer"))
        for step in ("customer", "subscription"):
            conn.execute(
                sa.text(
                    "INSERT INTO step_attempts (deal_id, step, attempt, started_at, outcome, "
                    "pruned_before) VALUES (1, :step, 1, :at, 'ok', 0)"
                ),
                {"step": step, "at": NOW},
            )
    engine.dispose()
    migrate.upgrade(empty_url)
    engine = make_engine(empty_url)
    with engine.connect() as conn:
        marks = conn.execute(sa.text("SELECT id, stripe_requested FROM deals ORDER BY id")).all()
        requested = conn.execute(
            sa.text("SELECT id, create_requested_at IS NOT NULL FROM customers ORDER BY id")
        ).all()
        tables = sa.inspect(conn).get_table_names()
    engine.dispose()
    assert [tuple(m) for m in marks] == [(1, "customer,subscription"), (2, None)]
    assert [(i, bool(r)) for i, r in requested] == [(1, True), (2, False)]
    assert "provisioning_locks" not in tables

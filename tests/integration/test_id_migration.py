"""The upgrade to 18-character Salesforce ids: rows written under 15-character ids are given
their 18-character form (history kept), the schema then refuses a 15-character id, and a
database already holding one record twice is named and left unchanged."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from sf_bridge.config import Settings
from sf_bridge.crm.port import InMemoryCrm
from sf_bridge.crm.soql import to_18
from sf_bridge.db import migrate
from sf_bridge.db.engine import make_engine, normalise_url
from sf_bridge.errors import ConfigurationError

BEFORE = "0003"  # the last revision that accepted 15-character ids
NOW = datetime(2026, 11, 20, tzinfo=UTC)
OPP_15, ACCOUNT_15 = "006Hs00001AcmeY", "001Hs00002AcmeC"
OTHER_OPP = "0068d00000AbCdEAAV"

metadata = sa.MetaData()
deals = sa.Table(
    "deals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("opportunity_id", sa.String),
    sa.Column("account_id", sa.String),
    sa.Column("status", sa.String),
    sa.Column("attempts", sa.Integer),
    sa.Column("source", sa.String),
    sa.Column("writeback_pending", sa.Boolean),
    sa.Column("opportunity", sa.JSON),
    sa.Column("plan", sa.JSON),
    sa.Column("customer_id", sa.Integer),
    sa.Column("stripe_customer_id", sa.String),
    sa.Column("stripe_subscription_id", sa.String),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)
customers = sa.Table(
    "customers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sf_account_id", sa.String),
    sa.Column("customer_key", sa.String),
    sa.Column("name", sa.String),
    sa.Column("stripe_customer_id", sa.String),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)
step_attempts = sa.Table(
    "step_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("deal_id", sa.Integer),
    sa.Column("step", sa.String),
    sa.Column("attempt", sa.Integer),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("outcome", sa.String),
)
deal_events = sa.Table(
    "deal_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("deal_id", sa.Integer),
    sa.Column("at", sa.DateTime(timezone=True)),
    sa.Column("kind", sa.String),
    sa.Column("message", sa.Text),
)


@pytest.fixture(params=["sqlite", "postgresql"])
def old_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own at the revision before this change."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        migrate.upgrade(url, BEFORE)
        yield url
        return
    base = os.environ.get("SF_BRIDGE_TEST_DATABASE_URL")
    if not base:
        pytest.skip("PostgreSQL tests need SF_BRIDGE_TEST_DATABASE_URL")
    admin_url = make_url(normalise_url(base))
    name = f"sfb_ids_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{os.getpid()}"
    admin = make_engine(
        admin_url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url, BEFORE)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _deal(conn: sa.Connection, opportunity_id: str, account_id: str | None, **extra: Any) -> int:
    values = {
        "opportunity_id": opportunity_id,
        "account_id": account_id,
        "status": "done",
        "attempts": 0,
        "source": "file",
        "writeback_pending": False,
        "created_at": NOW,
        "updated_at": NOW,
        **extra,
    }
    return int(conn.execute(deals.insert().values(values).returning(deals.c.id)).scalar_one())


def _customer(conn: sa.Connection, account_id: str, stripe_id: str, key: str | None = None) -> int:
    values = {
        "sf_account_id": account_id,
        "customer_key": key,
        "name": "Acme Corp",
        "stripe_customer_id": stripe_id,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return int(
        conn.execute(customers.insert().values(values).returning(customers.c.id)).scalar_one()
    )


def _history(conn: sa.Connection, deal_id: int) -> None:
    conn.execute(
        step_attempts.insert().values(
            deal_id=deal_id, step="customer", attempt=1, started_at=NOW, outcome="ok"
        )
    )
    conn.execute(deal_events.insert().values(deal_id=deal_id, at=NOW, kind="received", message=""))


def test_15_character_ids_get_their_18_character_form_and_keep_their_history(
    old_db_url: str,
) -> None:
    engine = make_engine(old_db_url)
    with engine.begin() as conn:
        customer_id = _customer(conn, ACCOUNT_15, "cus_1")
        deal_id = _deal(
            conn,
            OPP_15,
            ACCOUNT_15,
            customer_id=customer_id,
            opportunity={"Id": OPP_15, "AccountId": ACCOUNT_15, "Account": {"Id": ACCOUNT_15}},
            plan={"opportunity_id": OPP_15, "customer": {"account_id": ACCOUNT_15, "name": "A"}},
        )
        other_id = _deal(conn, OTHER_OPP, None, source="stream")
        _history(conn, deal_id)
        _history(conn, other_id)

    migrate.upgrade(old_db_url, "0004b")

    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(deals))}
        assert (rows[deal_id].opportunity_id, rows[deal_id].account_id) == (
            to_18(OPP_15),
            to_18(ACCOUNT_15),
        )
        assert rows[deal_id].opportunity == {
            "Id": to_18(OPP_15),
            "AccountId": to_18(ACCOUNT_15),
            "Account": {"Id": to_18(ACCOUNT_15)},
        }
        assert rows[deal_id].plan == {
            "opportunity_id": to_18(OPP_15),
            "customer": {"account_id": to_18(ACCOUNT_15), "name": "A"},
        }
        assert (rows[other_id].opportunity_id, rows[other_id].account_id) == (OTHER_OPP, None)
        assert conn.execute(sa.select(customers.c.sf_account_id)).scalars().all() == [
            to_18(ACCOUNT_15)
        ]
        # Changing the constraints of deals copied the table: its history is all there.
        assert conn.execute(sa.select(sa.func.count()).select_from(step_attempts)).scalar() == 2
        assert conn.execute(sa.select(sa.func.count()).select_from(deal_events)).scalar() == 2

    for insert in (
        lambda c: _deal(c, "006Hs00001BlueT", None),
        lambda c: _deal(c, to_18("006Hs00001BlueT"), "001Hs00002BlueG"),
        lambda c: _customer(c, "001Hs00002BlueG", "cus_2"),
        lambda c: _history(c, 9999),  # the copied deals table is still what attempts refer to
    ):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            insert(conn)
    engine.dispose()


def test_one_record_held_under_two_ids_is_named_and_nothing_changes(old_db_url: str) -> None:
    engine = make_engine(old_db_url)
    with engine.begin() as conn:
        first = _customer(conn, to_18(ACCOUNT_15), "cus_1")
        second = _customer(conn, ACCOUNT_15, "cus_2")
        long_deal = _deal(conn, to_18(OPP_15), to_18(ACCOUNT_15), customer_id=first)
        short_deal = _deal(conn, OPP_15, ACCOUNT_15, customer_id=second)
        junk = _deal(conn, "not-an-id", None)

    with pytest.raises(ConfigurationError) as info:
        migrate.upgrade(old_db_url)
    text = info.value.user_message()
    assert f"deals {long_deal} ({to_18(OPP_15)}) and {short_deal} ({OPP_15})" in text
    assert f"one record, {to_18(OPP_15)}" in text
    assert f"customers {first} ({to_18(ACCOUNT_15)}, Stripe cus_1) and {second}" in text
    assert f"deal {junk} has opportunity id 'not-an-id'" in text
    assert "sf-bridge db upgrade" in text

    assert migrate.current_revision(engine) == BEFORE
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(deals.c.opportunity_id)).scalars()) == sorted(
            [to_18(OPP_15), OPP_15, "not-an-id"]
        )
    engine.dispose()


def test_customers_of_an_old_database_are_found_by_new_deals(
    old_db_url: str, provisioning_emulator: Any
) -> None:
    """After the upgrade a new deal of an account finds the Stripe customer its earlier deals
    made: one written under the 15-character account id, one whose only deal (a custom plan)
    named its currency on the opportunity alone, one with no deal at all."""
    from sf_bridge.billing.stripe_gateway import StripeGateway
    from sf_bridge.db.engine import make_session_factory
    from sf_bridge.provisioning.queue import enqueue_opportunities
    from sf_bridge.provisioning.retry import request_retrier
    from sf_bridge.provisioning.stripe_request import customer_spec
    from tests.fixtures.provisioning import (
        FAST_RETRY,
        FakeMappings,
        Harness,
        TestClock,
        drain,
        make_plan,
        settled,
    )

    emu = provisioning_emulator
    gateway = StripeGateway(emu.api_key, api_base=emu.url, retry=request_retrier(FAST_RETRY))
    short, custom, bare = ACCOUNT_15, "001Hs00002BlueGAAQ", "001Hs00002GreyHAAQ"
    stripe_ids = {}
    for account in (short, custom, bare):
        spec = customer_spec(name="Acme", email=None, account_id=account, customer_key=account)
        stripe_ids[account] = gateway.create_customer(spec, idempotency_key=account).id
    engine = make_engine(old_db_url)
    with engine.begin() as conn:
        row = _customer(conn, short, stripe_ids[short], key=short)
        paid = make_plan(OPP_15, account_id=short, customer_key=short).to_dict()
        _deal(conn, OPP_15, short, customer_id=row, plan=paid, stripe_subscription_id="sub_1")
        row = _customer(conn, custom, stripe_ids[custom], key=custom)
        plan = make_plan(OTHER_OPP, account_id=custom, customer_key=custom, custom=True)
        _deal(
            conn,
            OTHER_OPP,
            custom,
            customer_id=row,
            stripe_customer_id=stripe_ids[custom],
            plan=plan.to_dict(),
            opportunity={"Id": OTHER_OPP, "AccountId": custom, "CurrencyIsoCode": "USD"},
        )
        _customer(conn, bare, stripe_ids[bare], key=bare)
    engine.dispose()

    migrate.upgrade(old_db_url)

    engine = make_engine(old_db_url)
    harness = Harness(
        session_factory=make_session_factory(engine),
        billing=gateway,
        crm=InMemoryCrm(),
        mappings=FakeMappings(),
        clock=TestClock(),
        settings=Settings(SF_BRIDGE_WORKER_CONCURRENCY=2, SF_BRIDGE_MAX_ATTEMPTS=8),  # type: ignore[call-arg]
    )
    new_deals = {
        to_18(short): "006Hs00001NewAAAAA",
        custom: "006Hs00001NewBAAAA",
        bare: "006Hs00001NewCAAAA",
    }
    for account, opp in new_deals.items():
        harness.add_opportunity(make_plan(opp, account_id=account))  # key <account>/USD
    with harness.session_factory() as session, session.begin():
        enqueue_opportunities(session, list(new_deals.values()), source="test")
    drain(harness.worker(), settled(harness, *new_deals.values()))
    try:
        for account, opp in new_deals.items():
            deal = harness.deal(opp)
            assert deal.status == "done", deal.last_error
            assert (
                deal.stripe_customer_id == stripe_ids[account if account != to_18(short) else short]
            )
        assert emu.count("customer") == 3  # no second Stripe customer for any account
    finally:
        engine.dispose()


def test_customer_keys_that_are_the_account_id_get_its_18_character_form(
    old_db_url: str,
) -> None:
    """New deals key a customer by the 18-character Account id the intake stores; another
    identifier value is kept, even one shaped like an id (a 15-character customer number)."""
    number = "CUST00000012345"
    engine = make_engine(old_db_url)
    with engine.begin() as conn:
        by_account = _customer(conn, ACCOUNT_15, "cus_1", key=ACCOUNT_15)
        by_number = _customer(conn, "001Hs00002BlueGAAQ", "cus_2", key=number)
        _deal(
            conn,
            OPP_15,
            ACCOUNT_15,
            customer_id=by_account,
            plan={"customer": {"account_id": ACCOUNT_15, "customer_key": ACCOUNT_15}},
        )
        _deal(
            conn,
            OTHER_OPP,
            "001Hs00002BlueGAAQ",
            customer_id=by_number,
            plan={"customer": {"account_id": "001Hs00002BlueGAAQ", "customer_key": number}},
        )
    migrate.upgrade(old_db_url, "0004b")
    with engine.connect() as conn:
        keys = conn.execute(sa.select(customers.c.customer_key).order_by(customers.c.id)).all()
        plans = conn.execute(sa.select(deals.c.plan).order_by(deals.c.id)).scalars().all()
    engine.dispose()
    assert [k for (k,) in keys] == [to_18(ACCOUNT_15), number]
    assert [p["customer"]["customer_key"] for p in plans] == [to_18(ACCOUNT_15), number]

"""Upgrading a database with card deals: each keeps the payment state its opportunity was
told, and a paid deal whose "Provisioned" was still to be written is written after the
upgrade."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from sf_bridge.db import migrate
from sf_bridge.db.engine import make_engine
from tests.integration.test_migration_customer_keys import empty_url  # noqa: F401

BEFORE = "0006i"
NOW = datetime(2026, 12, 1, tzinfo=UTC)

deals = sa.table(
    "deals",
    sa.column("id", sa.Integer),
    sa.column("opportunity_id", sa.String),
    sa.column("status", sa.String),
    sa.column("attempts", sa.Integer),
    sa.column("source", sa.String),
    sa.column("payment_state", sa.String),
    sa.column("payment_reported", sa.String),
    sa.column("writeback_pending", sa.Boolean),
    sa.column("written_back_at", sa.DateTime(timezone=True)),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)


def _deal(deal_id: int, status: str, state: str | None, pending: bool, written: bool) -> sa.Insert:
    return sa.insert(deals).values(
        id=deal_id,
        opportunity_id=f"006{deal_id:015d}",
        status=status,
        attempts=0,
        source="stream",
        payment_state=state,
        writeback_pending=pending,
        written_back_at=NOW if written else None,
        created_at=NOW,
        updated_at=NOW,
    )


def test_card_deals_keep_what_their_opportunity_was_told(empty_url: str) -> None:  # noqa: F811
    migrate.upgrade(empty_url, BEFORE)
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(_deal(1, "done", "awaiting_payment", False, True))
        conn.execute(_deal(2, "done", "paid", True, True))  # its "Provisioned" still due
        conn.execute(_deal(3, "done", "paid", False, True))
        conn.execute(_deal(4, "entitled", "awaiting_payment", False, False))  # in flight
        conn.execute(_deal(5, "done", None, False, True))  # invoiced
    engine.dispose()
    migrate.upgrade(empty_url)
    engine = make_engine(empty_url)
    with engine.connect() as conn:
        told = conn.execute(
            sa.select(deals.c.id, deals.c.payment_reported).order_by(deals.c.id)
        ).all()
    engine.dispose()
    assert [tuple(t) for t in told] == [
        (1, "awaiting_payment"),
        (2, "awaiting_payment"),  # reported as paid by the next worker cycle
        (3, "paid"),
        (4, None),  # its write-back records what it tells
        (5, None),
    ]

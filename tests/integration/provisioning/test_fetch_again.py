"""Known deals sent back to the fetch step, on a real database: which ones a change of their
line items refreshes, and which ones a new won event brings back, while a deal already in
Stripe, done, held by a worker or skipped before the floor is left alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.models import Deal, utcnow
from sf_bridge.provisioning.queue import (
    enqueue_opportunities,
    known_opportunities,
    refresh_modified,
    refresh_unprovisioned,
    requeue_won_again,
)

# name -> (status, current_step, last_error_code)
STATES = {
    "fetched": ("fetched", "map", None),
    "mapped": ("mapped", "customer", None),
    "waiting_lines": ("retrying", "fetch", "awaiting_line_items"),
    "parked_map": ("needs_attention", "map", "mapping"),
    "skipped_not_won": ("skipped", None, "not_won"),
    "skipped_floor": ("skipped", None, "before_floor"),
    "in_stripe": ("customer_ready", "subscription", None),
    "parked_invoice": ("needs_attention", "invoice", "billing_rejected"),
    "done": ("done", None, None),
    "held": ("fetched", "map", None),
}


def opp_id(index: int) -> str:
    return f"0060000000{index:05d}AAA"


def seed(session_factory: sessionmaker[Session]) -> dict[str, str]:
    ids = {name: opp_id(i) for i, name in enumerate(STATES)}
    with session_factory() as session, session.begin():
        enqueue_opportunities(session, list(ids.values()), source="stream")
        for name, (status, step, code) in STATES.items():
            deal = session.execute(
                select(Deal).where(Deal.opportunity_id == ids[name])
            ).scalar_one()
            deal.status, deal.current_step, deal.last_error_code = status, step, code
            deal.last_error = "why" if code else None
            if name == "held":
                deal.locked_by, deal.locked_until = "worker-1", utcnow() + timedelta(seconds=30)
    return ids


def fetch_step(session_factory: sessionmaker[Session]) -> set[str]:
    with session_factory() as session:
        return set(
            session.execute(
                select(Deal.opportunity_id).where(
                    Deal.status == "received", Deal.current_step == "fetch"
                )
            ).scalars()
        )


def test_changed_lines_refetch_only_deals_nothing_reached_stripe_for(
    session_factory: sessionmaker[Session],
) -> None:
    ids = seed(session_factory)
    with session_factory() as session, session.begin():
        refreshed = refresh_unprovisioned(session, [*ids.values(), opp_id(99)], source="stream")
    expected = {"fetched", "mapped", "waiting_lines", "parked_map", "skipped_not_won"}
    assert set(refreshed) == {ids[name] for name in expected}
    assert fetch_step(session_factory) == {ids[name] for name in expected}
    with session_factory() as session:
        deal = session.execute(
            select(Deal).where(Deal.opportunity_id == ids["parked_map"])
        ).scalar_one()
        assert (deal.last_error, deal.last_error_code, deal.attempts) == (None, None, 0)
        assert known_opportunities(session, [ids["done"], opp_id(99)]) == {ids["done"]}


def test_a_won_event_brings_back_only_deals_skipped_as_no_longer_won(
    session_factory: sessionmaker[Session],
) -> None:
    ids = seed(session_factory)
    with session_factory() as session, session.begin():
        again = requeue_won_again(session, list(ids.values()), source="sweep")
    assert again == [ids["skipped_not_won"]]


def test_the_sweep_refetches_unprovisioned_deals_whose_record_changed_since_their_fetch(
    session_factory: sessionmaker[Session],
) -> None:
    ids = seed(session_factory)
    fetched_at = "2026-12-01T10:00:00.000+0000"
    with session_factory() as session, session.begin():
        for deal in session.execute(select(Deal)).scalars():
            deal.opportunity = {"Id": deal.opportunity_id, "LastModifiedDate": fetched_at}
    same = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    later = same + timedelta(seconds=1)
    with session_factory() as session, session.begin():
        unchanged = refresh_modified(session, dict.fromkeys(ids.values(), same), source="sweep")
    assert unchanged == []
    with session_factory() as session, session.begin():
        changed = refresh_modified(session, dict.fromkeys(ids.values(), later), source="sweep")
    expected = {"fetched", "mapped", "waiting_lines", "parked_map", "skipped_not_won"}
    assert set(changed) == {ids[name] for name in expected}
    assert fetch_step(session_factory) == {ids[name] for name in expected}

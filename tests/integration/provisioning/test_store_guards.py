"""Writes from outside the steps go through the deal store, guarded: replay leaves a deal a
worker is running, or one cancelled since it was read; a cancellation outlives a worker's step."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from sf_bridge.db.models import CANCELLED, Deal, DealEvent, utcnow
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.replay import replay
from sf_bridge.provisioning.store import DealStore
from tests.fixtures.provisioning import Harness

OPP = "006000000000021AAA"


def _park(h: Harness, **columns: object) -> int:
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [OPP], source="stream")
        deal = session.execute(select(Deal).where(Deal.opportunity_id == OPP)).scalar_one()
        deal.status, deal.current_step = "needs_attention", "customer"
        deal.last_error, deal.last_error_code = "Stripe refused", "billing_rejected"
        for name, value in columns.items():
            setattr(deal, name, value)
        session.flush()
        return deal.id


def _replayed_events(h: Harness, deal_id: int) -> int:
    with h.session_factory() as session:
        kinds = session.scalars(select(DealEvent.kind).where(DealEvent.deal_id == deal_id))
        return list(kinds).count("replayed")


def test_a_parked_deal_is_requeued_with_its_event(harness: Harness) -> None:
    deal_id = _park(harness)
    [outcome] = replay(harness.session_factory, [OPP])
    assert (outcome.requeued, outcome.from_step) == (True, "customer")
    deal = harness.deal(OPP)
    assert (deal.status, deal.current_step, deal.attempts) == ("mapped", "customer", 0)
    assert _replayed_events(harness, deal_id) == 1


def test_a_deal_a_worker_is_running_is_not_replayed(harness: Harness) -> None:
    deal_id = _park(harness, locked_by="worker-b", locked_until=utcnow() + timedelta(minutes=5))
    [outcome] = replay(harness.session_factory, [OPP])
    assert outcome.requeued is False
    assert "a worker is running it now" in outcome.message
    deal = harness.deal(OPP)
    assert (deal.status, deal.locked_by) == ("needs_attention", "worker-b")
    assert _replayed_events(harness, deal_id) == 0


def test_a_deal_cancelled_meanwhile_stays_cancelled(harness: Harness) -> None:
    deal_id = _park(harness)
    store = DealStore(harness.session_factory, owner="x", lease=timedelta(0), clock=utcnow)
    # Cancelled (the opportunity un-won): replay, which would requeue a parked deal, does not.
    assert store.cancel(deal_id, "the opportunity is no longer won", "salesforce")
    assert not store.cancel(deal_id, "again", "salesforce")  # once
    [outcome] = replay(harness.session_factory, [OPP])
    assert outcome.requeued is False
    assert harness.deal(OPP).status == CANCELLED
    with harness.session_factory() as session:
        kinds = list(session.scalars(select(DealEvent.kind).where(DealEvent.deal_id == deal_id)))
    assert kinds.count("cancelled") == 1
    assert "replayed" not in kinds


def test_a_deal_cancelled_during_a_workers_stripe_step_stays_cancelled(harness: Harness) -> None:
    deal_id = _park(harness, status="retrying", current_step="subscription")
    worker = DealStore(
        harness.session_factory, owner="w1", lease=timedelta(minutes=1), clock=utcnow
    )
    [deal] = worker.claim(("subscription",), 1)
    started = worker.start(deal, "subscription", account="001000000000001AAA", identity=None)
    assert started is not None
    # The subscription ends (a webhook) while the worker's request is under way.
    other = DealStore(harness.session_factory, owner="api", lease=timedelta(0), clock=utcnow)
    assert other.cancel(deal_id, "Stripe subscription canceled", "customer.subscription.deleted")
    assert not worker.fail(
        deal_id=deal_id,
        step="subscription",
        attempt_no=1,
        retry_at=utcnow() + timedelta(minutes=1),
        reason="Stripe timed out",
        code="billing_unavailable",
        duration=1,
        stripe_request_id=None,
        idempotency_key=None,
        detail=None,
    )
    assert harness.deal(OPP).status == CANCELLED

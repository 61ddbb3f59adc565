"""The worker's own look at card deals still awaiting their first payment after Stripe's
23 hours: a backstop for webhooks that never arrived.

Stripe tells sf-bridge of a card deal's first payment and of its expiry by webhook
(`sf_bridge.invoices.events`). An endpoint down longer than Stripe's retries ("Stripe
automatically resends the undelivered events to your endpoint for up to three days",
docs.stripe.com/webhooks/process-undelivered-events), or an event lost otherwise, would leave
the deal `awaiting_payment` for good: its grants pending forever, or under
`card_payments.entitlements: at_once` in effect although Stripe expired the subscription.
So the worker process asks Stripe, on a schedule, for the subscription of every card deal
still awaiting its payment once the 23 hours (and a margin) have passed since it was
provisioned, and records what it finds exactly as the webhook would: `active` is the first
payment, `incomplete_expired` (or `canceled`) the end. Only reads go to Stripe; each deal is
recorded in its own transaction by the same guarded statements as the webhook, so a crash, a
second run or a webhook arriving at the same time changes nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.engine import transaction
from sf_bridge.db.models import Deal
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.payment import AWAITING_PAYMENT, UNPAID_EXPIRY

if TYPE_CHECKING:
    from sf_bridge.billing.port import BillingGateway

log = get_logger(__name__)

# Past Stripe's 23 hours, before asking: Stripe's own expiry runs on its schedule.
CHECK_MARGIN = timedelta(minutes=10)
HOW = "payment check"


@dataclass(frozen=True)
class PaymentCheck:
    deal_id: int
    subscription_id: str
    status: str  # the subscription's status in Stripe, or "missing" (left as it is)
    outcome: str  # "first_payment_recorded", "subscription_cancelled" or "unchanged"


def overdue_card_deals(
    session_factory: sessionmaker[Session], now: datetime, limit: int
) -> list[tuple[int, str]]:
    """(deal id, subscription id) of provisioned card deals still awaiting their first
    payment although their subscription should have been paid or expired by now."""
    cutoff = now - UNPAID_EXPIRY - CHECK_MARGIN
    with session_factory() as session:
        rows = session.execute(
            select(Deal.id, Deal.stripe_subscription_id)
            .where(
                Deal.payment_state == AWAITING_PAYMENT,
                Deal.status == "done",
                Deal.stripe_subscription_id.is_not(None),
                Deal.completed_at <= cutoff,
            )
            .order_by(Deal.id)
            .limit(limit)
        ).all()
    return [(int(deal_id), str(sub)) for deal_id, sub in rows]


def check_unpaid_card_deals(
    session_factory: sessionmaker[Session],
    billing: BillingGateway | None,
    *,
    now: datetime,
    limit: int = 100,
) -> list[PaymentCheck]:
    """Asks Stripe about each overdue card deal (`overdue_card_deals`) and records its first
    payment or its end; returns what was found."""
    from sf_bridge.invoices.records import (
        ENDED_SUBSCRIPTION_STATUSES,
        record_first_payment,
        record_subscription_ended,
    )

    if billing is None:
        return []
    checks: list[PaymentCheck] = []
    for deal_id, subscription_id in overdue_card_deals(session_factory, now, limit):
        subscription = billing.get_subscription(subscription_id)
        # Not found: left as it is (another Stripe account or mode would say the same of
        # every deal); `sf-bridge reconcile` reports a subscription gone from Stripe.
        status = subscription.status if subscription is not None else "missing"
        outcome = "unchanged"
        if status == "active" or status in ENDED_SUBSCRIPTION_STATUSES:
            with transaction(session_factory) as session:
                if status == "active":
                    if record_first_payment(session, subscription_id, how=HOW):
                        outcome = "first_payment_recorded"
                else:
                    cancelled, _revoked = record_subscription_ended(
                        session, subscription_id, f"Stripe subscription {status}", how=HOW
                    )
                    if cancelled:
                        outcome = "subscription_cancelled"
        log.info(
            "card_payment_checked",
            deal_id=deal_id,
            stripe_subscription_id=subscription_id,
            status=status,
            outcome=outcome,
        )
        checks.append(PaymentCheck(deal_id, subscription_id, status, outcome))
    return checks

"""A scheduled deal's contract starts: Stripe's subscription schedule has created the
subscription and its first invoice, and the deal goes on from its invoice step.

Stripe says so with events (`customer.subscription.created` carrying the `schedule`,
`subscription_schedule.updated` once it is `active`), applied by `sf_bridge.invoices.events`;
as events can be lost, the worker also looks, on its clock, at resting scheduled deals whose
start has passed (`start_due_schedules`). Both record the start the same way, in one guarded
transaction (`record_schedule_started`): only a deal still `scheduled`, resting (no step
under way) and with no subscription yet moves on, so a second event or a look after an event
changes nothing. The invoice step then finalizes the invoice as for any deal, and the
write-back puts its link on the Opportunity.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from sf_bridge.billing.port import BillingGateway
from sf_bridge.db.models import CANCELLED, Deal, DealEvent, EntitlementGrant
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.states import (
    SCHEDULED,
    STATUS_BEFORE,
    STEP_INVOICE,
)

log = get_logger(__name__)


def record_schedule_started(
    session: Session,
    *,
    schedule_id: str,
    subscription_id: str,
    invoice_id: str | None,
    now: datetime,
    how: str,
) -> bool:
    """Moves the schedule's deal on to its invoice step; False when there is no such deal
    waiting (not ours, started already, or a step still under way)."""
    deal_id = session.execute(
        update(Deal)
        .where(
            Deal.stripe_schedule_id == schedule_id,
            Deal.status == SCHEDULED,
            Deal.stripe_subscription_id.is_(None),
            Deal.current_step.is_(None),
        )
        .values(
            stripe_subscription_id=subscription_id,
            stripe_invoice_id=invoice_id,
            status=STATUS_BEFORE[STEP_INVOICE],
            current_step=STEP_INVOICE,
            attempts=0,
            next_attempt_at=None,
            locked_by=None,
            locked_until=None,
            completed_at=None,
            updated_at=now,
        )
        .returning(Deal.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if deal_id is None:
        return False
    # the grants made while it was scheduled end with this subscription
    session.execute(
        update(EntitlementGrant)
        .where(
            EntitlementGrant.deal_id == deal_id, EntitlementGrant.stripe_subscription_id.is_(None)
        )
        .values(stripe_subscription_id=subscription_id)
        .execution_options(synchronize_session=False)
    )
    session.add(
        DealEvent(
            deal_id=deal_id,
            at=now,
            kind="schedule_started",
            message=f"Subscription schedule {schedule_id} started subscription "
            f"{subscription_id} ({how}); its first invoice is finalized next.",
            detail={
                "schedule_id": schedule_id,
                "subscription_id": subscription_id,
                "invoice_id": invoice_id,
            },
        )
    )
    log.info(
        "schedule_started",
        deal_id=deal_id,
        stripe_schedule_id=schedule_id,
        stripe_subscription_id=subscription_id,
        how=how,
    )
    return True


def record_schedule_ended(
    session: Session, *, schedule_id: str, status: str, now: datetime, how: str
) -> bool:
    """The schedule of a deal still waiting for its start was cancelled (or released) in
    Stripe before it started: no subscription will come, so the deal is `cancelled` and the
    grants recorded from its start are revoked. False when no deal waits on that schedule."""
    deal_id = session.execute(
        update(Deal)
        .where(
            Deal.stripe_schedule_id == schedule_id,
            Deal.status == SCHEDULED,
            Deal.stripe_subscription_id.is_(None),
            Deal.current_step.is_(None),
        )
        .values(
            status=CANCELLED,
            last_error=f"Stripe subscription schedule {status} before the contract's start",
            last_error_code="schedule_ended",
            updated_at=now,
        )
        .returning(Deal.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if deal_id is None:
        return False
    reason = f"subscription schedule {schedule_id} {status} before its start"
    result = session.execute(
        update(EntitlementGrant)
        .where(EntitlementGrant.deal_id == deal_id, EntitlementGrant.active.is_(True))
        .values(active=False, revoked_at=now, revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    revoked = max(int(getattr(result, "rowcount", 0) or 0), 0)
    session.add(
        DealEvent(
            deal_id=deal_id,
            at=now,
            kind="cancelled",
            message=f"Cancelled ({how}): {reason}; nothing was billed.",
            detail={"schedule_id": schedule_id, "status": status, "grants_revoked": revoked},
        )
    )
    log.info("schedule_ended_before_start", deal_id=deal_id, stripe_schedule_id=schedule_id)
    return True


def start_due_schedules(
    session: Session, billing: BillingGateway, now: datetime, limit: int = 50
) -> int:
    """Resting scheduled deals whose contract start has passed: reads each schedule and
    records the start when Stripe has created the subscription. Returns how many moved on."""
    waiting = session.execute(
        select(Deal.stripe_schedule_id)
        .where(
            Deal.status == SCHEDULED,
            Deal.current_step.is_(None),
            Deal.stripe_subscription_id.is_(None),
            Deal.stripe_schedule_id.is_not(None),
            Deal.contract_start_at <= now,
        )
        .order_by(Deal.contract_start_at, Deal.id)
        .limit(limit)
    ).scalars()
    moved = 0
    for schedule_id in list(waiting):
        schedule = billing.get_schedule(schedule_id) if schedule_id else None
        if schedule is None or not schedule.subscription:
            continue
        sub = billing.get_subscription(schedule.subscription)
        if record_schedule_started(
            session,
            schedule_id=schedule.id,
            subscription_id=schedule.subscription,
            invoice_id=sub.latest_invoice if sub else None,
            now=now,
            how="the worker saw the contract's start pass",
        ):
            moved += 1
    return moved

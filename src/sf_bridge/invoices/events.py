"""Applying Stripe events (delivered by webhook) to our records.

Events arrive late, twice and out of order, so each is applied from the object's current
state: read from Stripe through the `BillingGateway` when one is configured, otherwise from
the event's own copy with rules that never move a state backwards (a paid invoice is never
reopened, a cancelled subscription never re-grants).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from sf_bridge.invoices.records import (
    ENDED_SUBSCRIPTION_STATUSES,
    TERMINAL_INVOICE_STATUSES,
    add_event,
    deal_for_invoice,
    record_first_payment,
    record_invoice_status,
    record_subscription_ended,
)
from sf_bridge.logging import get_logger

if TYPE_CHECKING:
    from sf_bridge.billing.port import BillingGateway

log = get_logger(__name__)

INVOICE_EVENTS = frozenset(
    {
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
        "invoice.overdue",
        "invoice.finalized",
        "invoice.voided",
        "invoice.marked_uncollectible",
    }
)
SUBSCRIPTION_EVENTS = frozenset({"customer.subscription.deleted", "customer.subscription.updated"})
# A schedule ended before it started the subscription of a deal waiting for its start.
SCHEDULE_END_EVENTS = frozenset(
    {"subscription_schedule.canceled", "subscription_schedule.released"}
)
# A schedule created the subscription of a deal waiting for its contract's start.
SCHEDULE_START_EVENTS = frozenset(
    {"customer.subscription.created", "subscription_schedule.updated"}
)


def _id(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        found = value.get("id")
        return found if isinstance(found, str) else None
    return None


def invoice_subscription_id(invoice: Mapping[str, Any]) -> str | None:
    """The invoice's subscription, under `parent.subscription_details` as the pinned Stripe
    API version has it (events come in the webhook endpoint's API version: see
    docs/setup-stripe.md); there is no top-level `invoice.subscription` to read."""
    parent = invoice.get("parent") or {}
    details = parent.get("subscription_details") or {} if isinstance(parent, Mapping) else {}
    return _id(details.get("subscription")) if isinstance(details, Mapping) else None


def apply_stripe_event(
    session: Session, event: Mapping[str, Any], billing: BillingGateway | None = None
) -> str:
    """Applies one verified event; returns a short outcome for logs and the dedupe record."""
    kind = str(event.get("type", ""))
    obj = (event.get("data") or {}).get("object") or {}
    if kind in INVOICE_EVENTS:
        return _apply_invoice(session, kind, obj, billing)
    if kind in SCHEDULE_END_EVENTS:
        return _apply_schedule_end(session, kind, obj, billing)
    if kind in SCHEDULE_START_EVENTS:
        return _apply_schedule_start(session, kind, obj, billing)
    if kind in SUBSCRIPTION_EVENTS:
        return _apply_subscription(session, kind, obj, billing)
    return "ignored"


def _apply_schedule_end(
    session: Session, kind: str, obj: Mapping[str, Any], billing: BillingGateway | None
) -> str:
    """A schedule cancelled or released before it created a subscription: the deal waiting
    on it is cancelled (`record_schedule_ended`). Read from Stripe when it can be."""
    from sf_bridge.db.models import utcnow
    from sf_bridge.provisioning.schedule_start import record_schedule_ended

    schedule_id = _id(obj.get("id"))
    if not schedule_id:
        return "ignored"
    status, subscription_id = str(obj.get("status", "")), _id(obj.get("subscription"))
    if billing is not None:
        current = billing.get_schedule(schedule_id)
        if current is not None:
            status, subscription_id = current.status, current.subscription
    if status not in ("canceled", "released") or subscription_id:
        return "unchanged"
    ended = record_schedule_ended(
        session, schedule_id=schedule_id, status=status, now=utcnow(), how=kind
    )
    return "schedule_ended" if ended else "unchanged"


def _apply_schedule_start(
    session: Session, kind: str, obj: Mapping[str, Any], billing: BillingGateway | None
) -> str:
    """A subscription schedule started the subscription of a scheduled deal: the deal goes on
    to finalize the first invoice (`record_schedule_started`). Read from Stripe when a
    gateway is configured, else from the event's copy."""
    from sf_bridge.db.models import utcnow
    from sf_bridge.provisioning.schedule_start import record_schedule_started

    if kind == "customer.subscription.created":
        schedule_id, subscription_id = _id(obj.get("schedule")), _id(obj.get("id"))
        invoice_id = _id(obj.get("latest_invoice"))
    else:
        schedule_id, subscription_id = _id(obj.get("id")), _id(obj.get("subscription"))
        invoice_id = None
    if not schedule_id:  # a subscription made without a schedule: nothing to start
        return "ignored"
    if billing is not None:
        schedule = billing.get_schedule(schedule_id)
        subscription_id = schedule.subscription if schedule is not None else None
        if subscription_id:
            sub = billing.get_subscription(subscription_id)
            invoice_id = sub.latest_invoice if sub is not None else invoice_id
    if not subscription_id:
        return "unchanged"
    started = record_schedule_started(
        session,
        schedule_id=schedule_id,
        subscription_id=subscription_id,
        invoice_id=invoice_id,
        now=utcnow(),
        how=kind,
    )
    return "schedule_started" if started else "unchanged"


def _apply_invoice(
    session: Session, kind: str, invoice: Mapping[str, Any], billing: BillingGateway | None
) -> str:
    invoice_id = str(invoice.get("id", ""))
    subscription_id = invoice_subscription_id(invoice)
    deal = deal_for_invoice(session, invoice_id, subscription_id)
    if deal is None:
        return "unknown_invoice"
    if billing is not None:
        current = billing.get_invoice(invoice_id)
        status, authoritative = current.status, True
    else:
        status, authoritative = str(invoice.get("status", "")), False
    changed = False
    if status:
        changed = record_invoice_status(
            session, deal, invoice_id, status, authoritative=authoritative, how=kind
        )
    if deal.stripe_invoice_id == invoice_id and deal.invoice_status:
        status = deal.invoice_status  # what we hold now, after this event was considered
    first = deal.stripe_invoice_id == invoice_id or (
        invoice.get("billing_reason") == "subscription_create"
    )
    paid_first = status == "paid" and first and subscription_id
    if paid_first and record_first_payment(session, subscription_id or "", how=kind):
        return "first_payment_recorded"
    if kind == "invoice.payment_failed" and status not in TERMINAL_INVOICE_STATUSES:
        add_event(
            session,
            deal,
            "invoice_payment_failed",
            f"A payment of invoice {invoice_id} failed; it is still {status or 'unpaid'}.",
            {"invoice_id": invoice_id, "attempt_count": invoice.get("attempt_count")},
        )
        return "payment_failed_recorded"
    if kind == "invoice.overdue" and status == "open":
        add_event(
            session,
            deal,
            "invoice_overdue",
            f"Invoice {invoice_id} is past its due date and unpaid; the overdue policy "
            "cancels the subscription once the grace period ends.",
            {"invoice_id": invoice_id, "due_date": invoice.get("due_date")},
        )
        return "overdue_recorded"
    return f"invoice_{status}" if changed else "unchanged"


def _apply_subscription(
    session: Session, kind: str, subscription: Mapping[str, Any], billing: BillingGateway | None
) -> str:
    subscription_id = str(subscription.get("id", ""))
    if billing is not None:
        current = billing.get_subscription(subscription_id)
        status = current.status if current is not None else "canceled"
    elif kind == "customer.subscription.deleted":
        status = "canceled"
    else:
        status = str(subscription.get("status", ""))
    if status == "active":
        # incomplete -> active: the first invoice is paid (a deal already paid is left as is).
        return (
            "first_payment_recorded"
            if record_first_payment(session, subscription_id, how=kind)
            else "unchanged"
        )
    if status not in ENDED_SUBSCRIPTION_STATUSES:
        return "unchanged"
    reason = f"Stripe subscription {status}"
    details = subscription.get("cancellation_details")
    if isinstance(details, Mapping) and details.get("reason"):
        reason += f" ({details['reason']})"
    cancelled, revoked = record_subscription_ended(session, subscription_id, reason, how=kind)
    if not cancelled and not revoked:
        return "unchanged"
    return "subscription_cancelled"

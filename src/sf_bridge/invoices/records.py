"""Recording invoice and subscription outcomes on deals; shared by webhooks, mark-paid and
the overdue policy so each records the same thing the same way."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sf_bridge.db.models import Deal, DealEvent, utcnow
from sf_bridge.provisioning.store import cancel_subscription_deals
from sf_bridge.provisioning.store import record_first_payment as _record_first_payment
from sf_bridge.provisioning.wakeup import work_added

# An invoice in one of these states never goes back to draft or open.
TERMINAL_INVOICE_STATUSES = frozenset({"paid", "void", "uncollectible"})
ENDED_SUBSCRIPTION_STATUSES = frozenset({"canceled", "incomplete_expired"})


def deal_for_invoice(session: Session, invoice_id: str, subscription_id: str | None) -> Deal | None:
    """The deal whose first invoice this is, else the deal of the invoice's subscription."""
    deal = session.scalar(select(Deal).where(Deal.stripe_invoice_id == invoice_id))
    if deal is None and subscription_id:
        deal = session.scalar(
            select(Deal).where(Deal.stripe_subscription_id == subscription_id).order_by(Deal.id)
        )
    return deal


def add_event(
    session: Session, deal: Deal, kind: str, message: str, detail: dict[str, Any] | None = None
) -> None:
    session.add(DealEvent(deal_id=deal.id, kind=kind, message=message, detail=detail))


def record_invoice_status(
    session: Session,
    deal: Deal,
    invoice_id: str,
    status: str,
    *,
    authoritative: bool,
    how: str,
) -> bool:
    """Records an invoice's status on its deal; returns whether anything changed.

    Only the deal's own (first) invoice sets `invoice_status`; other invoices of the
    subscription (renewals) are recorded as events. A status that is not `authoritative`
    (read from an event, which may be older than one already applied) never moves a paid,
    void or uncollectible invoice back.
    """
    if deal.stripe_invoice_id != invoice_id:
        add_event(
            session,
            deal,
            f"invoice_{status}",
            f"Invoice {invoice_id} of subscription {deal.stripe_subscription_id} is {status} "
            f"({how}).",
            {"invoice_id": invoice_id, "status": status},
        )
        return True
    if deal.invoice_status == status:
        return False
    if not authoritative and deal.invoice_status in TERMINAL_INVOICE_STATUSES:
        return False
    previous = deal.invoice_status
    deal.invoice_status = status
    deal.updated_at = utcnow()
    add_event(
        session,
        deal,
        f"invoice_{status}",
        f"Invoice {invoice_id} is {status} ({how}).",
        {"invoice_id": invoice_id, "status": status, "previous_status": previous},
    )
    return True


def record_subscription_ended(
    session: Session, subscription_id: str, reason: str, *, how: str
) -> tuple[list[int], int]:
    """Revokes the subscription's grants and marks its deals cancelled, through the deal
    store's guarded statements in the session's transaction; idempotent.

    Returns the deals newly cancelled and how many grants were revoked.
    """
    session.flush()
    cancelled, revoked = cancel_subscription_deals(
        session.connection(), subscription_id, reason, how, utcnow()
    )
    if cancelled:
        work_added(session)  # the worker writes "Cancelled" onto the opportunity at once
    return cancelled, revoked


def record_first_payment(session: Session, subscription_id: str, *, how: str) -> int:
    """The subscription's first invoice is paid: its card deals awaiting the payment are
    paid, their pending grants in effect (`sf_bridge.provisioning.payment`); idempotent.
    Returns how many deals changed."""
    session.flush()
    changed = len(_record_first_payment(session.connection(), subscription_id, how, utcnow()))
    if changed:
        # The worker writes "Provisioned" onto the opportunity: woken on commit in this
        # process, and by NOTIFY in the others on PostgreSQL (on SQLite, at its next look).
        work_added(session)
    return changed

"""The overdue policy: an invoice still open `grace_days` after its due date ends the deal.

For each such invoice the worker cancels the subscription in Stripe, revokes the grants tied
to it, records the decision on the deal (status `cancelled`, an event with the reason) and
writes it back to the Opportunity. Stripe is asked for the invoice's current state first, so
an invoice paid meanwhile (a webhook we missed, a wire recorded elsewhere) is only recorded.
`dry_run` reports what would happen and changes nothing. One log line per action.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm.port import OpportunityUpdate
from sf_bridge.db.engine import transaction
from sf_bridge.db.models import CANCELLED, Deal, utcnow
from sf_bridge.errors import SfBridgeError
from sf_bridge.invoices.records import (
    ENDED_SUBSCRIPTION_STATUSES,
    add_event,
    record_invoice_status,
    record_subscription_ended,
)
from sf_bridge.logging import get_logger

if TYPE_CHECKING:
    from sf_bridge.billing.port import BillingGateway
    from sf_bridge.crm.port import CrmGateway
    from sf_bridge.mapping.model import WriteBackFields

log = get_logger(__name__)

ActionKind = Literal["cancelled", "would_cancel", "no_longer_open", "not_yet_due", "failed"]
CANCELLED_STATUS_TEXT = "Cancelled"  # as the write-back spells "Provisioned" and "Needs attention"


@dataclass(frozen=True)
class OverdueAction:
    deal_id: int
    opportunity_id: str
    invoice_id: str
    subscription_id: str
    due_at: datetime | None
    days_overdue: int
    action: ActionKind
    reason: str
    grants_revoked: int = 0
    written_back: bool | None = None  # None: not attempted (dry run, no CRM or no fields)
    error: str | None = None


@dataclass(frozen=True)
class _Candidate:
    deal_id: int
    opportunity_id: str
    invoice_id: str
    subscription_id: str
    due_at: datetime | None


def _candidates(session_factory: sessionmaker[Session], cutoff: datetime) -> list[_Candidate]:
    with session_factory() as session:
        deals = session.scalars(
            select(Deal)
            .where(
                Deal.invoice_status == "open",
                Deal.stripe_invoice_id.is_not(None),
                Deal.stripe_subscription_id.is_not(None),
                Deal.status != CANCELLED,
                Deal.invoice_due_at.is_not(None),
                Deal.invoice_due_at <= cutoff,
            )
            .order_by(Deal.invoice_due_at, Deal.id)
        ).all()
        return [
            _Candidate(
                d.id,
                d.opportunity_id,
                d.stripe_invoice_id or "",
                d.stripe_subscription_id or "",
                d.invoice_due_at,
            )
            for d in deals
        ]


def _days_overdue(due_at: datetime | None, now: datetime) -> int:
    return max((now - due_at).days, 0) if due_at else 0


def _cancel(billing: BillingGateway, c: _Candidate) -> None:
    """Cancels the subscription; an already cancelled one counts as done."""
    try:
        billing.cancel_subscription(
            c.subscription_id,
            idempotency_key=f"overdue-cancel:{c.opportunity_id}:{c.subscription_id}",
        )
    except SfBridgeError:
        current = billing.get_subscription(c.subscription_id)
        if current is not None and current.status not in ENDED_SUBSCRIPTION_STATUSES:
            raise


def _log(action: OverdueAction, dry_run: bool) -> None:
    log.info(
        "overdue_policy_action",
        action=action.action,
        dry_run=dry_run,
        deal_id=action.deal_id,
        opportunity_id=action.opportunity_id,
        invoice_id=action.invoice_id,
        stripe_subscription_id=action.subscription_id,
        due_at=action.due_at.isoformat() if action.due_at else None,
        days_overdue=action.days_overdue,
        grants_revoked=action.grants_revoked,
        written_back=action.written_back,
        reason=action.reason,
        error=action.error,
    )


def apply_overdue_policy(
    session_factory: sessionmaker[Session],
    billing: BillingGateway | None,
    crm: CrmGateway | None,
    *,
    now: datetime,
    grace_days: int,
    dry_run: bool,
    write_back: WriteBackFields | None = None,
) -> list[OverdueAction]:
    """Cancels subscriptions whose invoice is open `grace_days` past due; returns the actions.

    `write_back` names the Opportunity fields to write the decision to (the mappings'
    `write_back` section: its `status` and `error` fields); without it, or without `crm`,
    nothing is written to Salesforce. Without `billing` (no Stripe configured) there is
    nothing to do.
    """
    if grace_days < 0:
        raise ValueError("grace_days must be zero or more")
    if billing is None:  # no STRIPE_API_KEY: custom plans only, so no invoices to follow
        return []
    actions: list[OverdueAction] = []
    for c in _candidates(session_factory, now - timedelta(days=grace_days)):
        action = _apply_one(
            session_factory, billing, c, now=now, grace_days=grace_days, dry_run=dry_run
        )
        actions.append(action)
        if action.action != "cancelled":  # cancellations are logged after their write-back
            _log(action, dry_run)
    if not dry_run and crm is not None and write_back is not None:
        actions = _write_back(session_factory, crm, write_back, actions)
    for action in actions:
        if action.action == "cancelled":
            _log(action, dry_run)
    return actions


def _action(
    c: _Candidate,
    days: int,
    kind: ActionKind,
    reason: str,
    *,
    due_at: datetime | None = None,
    grants_revoked: int = 0,
    error: str | None = None,
) -> OverdueAction:
    return OverdueAction(
        c.deal_id,
        c.opportunity_id,
        c.invoice_id,
        c.subscription_id,
        due_at if due_at is not None else c.due_at,
        days,
        kind,
        reason,
        grants_revoked=grants_revoked,
        error=error,
    )


def _apply_one(
    session_factory: sessionmaker[Session],
    billing: BillingGateway,
    c: _Candidate,
    *,
    now: datetime,
    grace_days: int,
    dry_run: bool,
) -> OverdueAction:
    """Decides on one deal's invoice from Stripe's current view of it, and acts unless dry."""
    days = _days_overdue(c.due_at, now)
    try:
        invoice = billing.get_invoice(c.invoice_id)
    except SfBridgeError as exc:
        return _action(
            c, days, "failed", "could not read the invoice from Stripe", error=exc.user_message()
        )
    if invoice.status != "open" or (
        invoice.due_date is not None and invoice.due_date > now - timedelta(days=grace_days)
    ):
        return _not_overdue(
            session_factory, c, invoice.status, invoice.due_date, now, days, dry_run
        )
    reason = (
        f"invoice {c.invoice_id} unpaid {days} days after its due date "
        f"{c.due_at.date().isoformat() if c.due_at else '?'} (grace period {grace_days} days)"
    )
    if dry_run:
        return _action(c, days, "would_cancel", reason)
    try:
        _cancel(billing, c)
    except SfBridgeError as exc:
        return _action(c, days, "failed", reason, error=exc.user_message())
    with transaction(session_factory) as session:
        _, revoked = record_subscription_ended(
            session, c.subscription_id, f"overdue: {reason}", how="overdue policy"
        )
        deal = session.get_one(Deal, c.deal_id)
        deal.last_error = f"Subscription cancelled: {reason}."
        deal.last_error_code = "invoice_overdue"
    return _action(c, days, "cancelled", reason, grants_revoked=revoked)


def _not_overdue(
    session_factory: sessionmaker[Session],
    c: _Candidate,
    status: str,
    due_date: datetime | None,
    now: datetime,
    days: int,
    dry_run: bool,
) -> OverdueAction:
    """Stripe says the invoice is no longer open or not yet overdue: record that, if allowed."""
    if not dry_run:
        with transaction(session_factory) as session:
            deal = session.get_one(Deal, c.deal_id)
            if status != "open":
                record_invoice_status(
                    session,
                    deal,
                    c.invoice_id,
                    status,
                    authoritative=True,
                    how="found by the overdue policy",
                )
            elif due_date is not None and due_date != deal.invoice_due_at:
                deal.invoice_due_at = due_date
    if status != "open":
        return _action(c, days, "no_longer_open", f"Stripe shows invoice {c.invoice_id} {status}")
    return _action(
        c,
        _days_overdue(due_date, now),
        "not_yet_due",
        f"Stripe shows invoice {c.invoice_id} due {due_date.isoformat() if due_date else '?'}",
        due_at=due_date,
    )


def _write_back(
    session_factory: sessionmaker[Session],
    crm: CrmGateway,
    fields: WriteBackFields,
    actions: list[OverdueAction],
) -> list[OverdueAction]:
    cancelled = [a for a in actions if a.action == "cancelled"]
    updates = []
    for a in cancelled:
        values: dict[str, object] = {}
        if fields.status:
            values[fields.status] = CANCELLED_STATUS_TEXT
        if fields.error:
            values[fields.error] = f"Subscription cancelled: {a.reason}."
        if values:
            updates.append(OpportunityUpdate(a.opportunity_id, values))
    if not updates:
        return actions
    outcome: dict[str, tuple[bool, str | None]] = {}
    for start in range(0, len(updates), 200):
        batch = updates[start : start + 200]
        try:
            results = crm.write_back(batch)
        except SfBridgeError as exc:
            for u in batch:
                outcome[u.opportunity_id] = (False, exc.user_message())
            continue
        for r in results:
            outcome[r.opportunity_id] = (r.ok, r.error)
    with transaction(session_factory) as session:
        for a in cancelled:
            ok, error = outcome.get(a.opportunity_id, (False, "not written"))
            deal = session.get_one(Deal, a.deal_id)
            if ok:
                deal.written_back_at = utcnow()
            else:
                add_event(
                    session,
                    deal,
                    "write_back_failed",
                    f"Writing the cancellation to the Opportunity failed: {error}",
                    {"error": error},
                )
    return [
        replace(
            a,
            written_back=outcome.get(a.opportunity_id, (False, None))[0],
            error=a.error or outcome.get(a.opportunity_id, (True, None))[1],
        )
        if a.action == "cancelled"
        else a
        for a in actions
    ]

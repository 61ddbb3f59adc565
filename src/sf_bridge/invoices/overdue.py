"""The overdue policy: an invoice still open `grace_days` after its due date ends the deal.

For each such invoice the worker cancels the subscription in Stripe, revokes the grants tied
to it, records the decision on the deal (status `cancelled`, an event with the reason) and
writes it back to the Opportunity. Stripe is asked for the invoice's current state first, so
an invoice paid meanwhile (a webhook we missed, a wire recorded elsewhere) is only recorded.
`dry_run` reports what would happen and changes nothing. One log line per action.

The policy runs in every replica, and exactly one acts on an invoice: each run leases the
overdue deals it takes (`DealStore.claim_overdue`, the worker's kind of lease on the deal
row), so another replica's run, or the worker, does not take them; every write goes through
the deal store. Before cancelling, Stripe's subscription is read: one cancelled by a run
that crashed before recording it is only recorded, and never cancelled twice.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm.port import OpportunityUpdate
from sf_bridge.errors import SfBridgeError
from sf_bridge.invoices.records import ENDED_SUBSCRIPTION_STATUSES
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.outcome import DealView
from sf_bridge.provisioning.store import DealStore

if TYPE_CHECKING:
    from sf_bridge.billing.port import BillingGateway
    from sf_bridge.crm.port import CrmGateway
    from sf_bridge.mapping.model import WriteBackFields

log = get_logger(__name__)

ActionKind = Literal["cancelled", "would_cancel", "no_longer_open", "not_yet_due", "failed"]
# How long a run holds an overdue deal: reading Stripe and cancelling takes seconds; a run
# that died leaves the deal to the next run of any replica once this runs out.
OVERDUE_LEASE = timedelta(minutes=5)
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
    deal: DealView
    deal_id: int
    opportunity_id: str
    invoice_id: str
    subscription_id: str
    due_at: datetime | None


def _candidate(deal: DealView, due_at: datetime) -> _Candidate:
    return _Candidate(
        deal,
        deal.id,
        deal.opportunity_id,
        deal.stripe_invoice_id or "",
        deal.stripe_subscription_id or "",
        due_at,
    )


def overdue_store(session_factory: sessionmaker[Session], now: datetime) -> DealStore:
    """The deal store of one run of the policy: its own lease owner, a clock that starts at
    the run's `now` and moves on with real time."""
    started = time.monotonic()
    return DealStore(
        session_factory,
        owner=f"overdue:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        lease=OVERDUE_LEASE,
        clock=lambda: now + timedelta(seconds=time.monotonic() - started),
    )


def _days_overdue(due_at: datetime | None, now: datetime) -> int:
    return max((now - due_at).days, 0) if due_at else 0


def _cancel(billing: BillingGateway, c: _Candidate) -> None:
    """Cancels the subscription unless Stripe shows it ended already (a run that crashed
    after cancelling it, or a cancellation in the dashboard); an already cancelled one
    counts as done."""
    current = billing.get_subscription(c.subscription_id)
    if current is None or current.status in ENDED_SUBSCRIPTION_STATUSES:
        return
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
    store = overdue_store(session_factory, now)
    cutoff = now - timedelta(days=grace_days)
    actions: list[OverdueAction] = []
    for batch in _batches(store, cutoff, dry_run):
        for deal, due_at in batch:
            action = _apply_one(
                store,
                billing,
                _candidate(deal, due_at),
                now=now,
                grace_days=grace_days,
                dry_run=dry_run,
            )
            actions.append(action)
            if action.action != "cancelled":  # cancellations are logged after their write-back
                _log(action, dry_run)
    if not dry_run and crm is not None and write_back is not None:
        actions = _write_back(store, crm, write_back, actions)
    for action in actions:
        if action.action == "cancelled":
            _log(action, dry_run)
    return actions


def _batches(
    store: DealStore, cutoff: datetime, dry_run: bool
) -> Iterator[list[tuple[DealView, datetime]]]:
    """The overdue deals, leased to this run 50 at a time (a dry run leases nothing): each
    deal once a run, so one that stays overdue (Stripe unreachable) waits for the next run."""
    if dry_run:
        yield store.overdue(cutoff)
        return
    seen: set[int] = set()
    while batch := store.claim_overdue(cutoff, 50, exclude=seen):
        seen.update(deal.id for deal, _ in batch)
        yield batch


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
    store: DealStore,
    billing: BillingGateway,
    c: _Candidate,
    *,
    now: datetime,
    grace_days: int,
    dry_run: bool,
) -> OverdueAction:
    """Decides on one deal's invoice from Stripe's current view of it, and acts unless dry.
    Unless dry, the deal is leased to this run; every outcome gives the lease back."""
    try:
        action = _decide(store, billing, c, now=now, grace_days=grace_days, dry_run=dry_run)
    except Exception:  # a bug: give the deal back (a process that dies leaves its lease to run out)
        if not dry_run:
            store.release(c.deal_id)
        raise
    if not dry_run and action.action == "failed":
        store.release(c.deal_id)
    return action


def _decide(
    store: DealStore,
    billing: BillingGateway,
    c: _Candidate,
    *,
    now: datetime,
    grace_days: int,
    dry_run: bool,
) -> OverdueAction:
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
        return _not_overdue(store, c, invoice.status, invoice.due_date, now, days, dry_run)
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
    held, revoked = store.cancel_overdue(c.deal, f"overdue: {reason}", "overdue policy")
    if not held:
        return _action(
            c, days, "failed", reason, error="the deal's lease ran out; retried next run"
        )
    return _action(c, days, "cancelled", reason, grants_revoked=revoked)


def _not_overdue(
    store: DealStore,
    c: _Candidate,
    status: str,
    due_date: datetime | None,
    now: datetime,
    days: int,
    dry_run: bool,
) -> OverdueAction:
    """Stripe says the invoice is no longer open or not yet overdue: record that, if allowed."""
    if not dry_run:
        store.invoice_found(
            c.deal,
            status=status,
            due_at=due_date,
            stored_due_at=c.due_at,
            how="found by the overdue policy",
        )
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
    store: DealStore,
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
    told: dict[int, str | None] = {}
    for a in cancelled:
        ok, error = outcome.get(a.opportunity_id, (False, "not written"))
        told[a.deal_id] = None if ok else (error or "not written")
    store.cancellations_written_back(told)
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

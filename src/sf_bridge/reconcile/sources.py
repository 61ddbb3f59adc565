"""Reads what a reconciliation compares, changing nothing: sf-bridge's deals and grants, the
won opportunities in Salesforce (one query per 200 records) and the tagged Stripe objects
(listed page by page)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from sf_bridge.billing.port import StripeRecord
from sf_bridge.crm.port import Opportunity
from sf_bridge.db.models import Deal, EntitlementGrant
from sf_bridge.provisioning.eligibility import close_date
from sf_bridge.reconcile.compare import SETTLED, DealFacts, GrantFacts

STRIPE_KINDS = ("customer", "subscription", "invoice")


class ReconcileCrm(Protocol):
    def won_closed_since(self, day: date | None) -> list[str]: ...

    def fetch_opportunities(self, opportunity_ids: list[str]) -> list[Opportunity]: ...


class ReconcileBilling(Protocol):
    def list_records(
        self, kind: str, *, created_since: datetime | None = None
    ) -> list[StripeRecord]: ...

    def retrieve_record(self, kind: str, object_id: str) -> StripeRecord | None: ...


def _in_scope(deal: Deal, since: datetime | None) -> bool:
    if since is None:
        return True
    closed = close_date(deal.opportunity or {})
    if closed is not None:
        return closed >= since.date()
    return deal.created_at >= since


def read_deals(session: Session, since: datetime | None) -> list[DealFacts]:
    """The deals won since `since` (by Close Date, as the floor counts them)."""
    facts = []
    for deal in session.execute(select(Deal).order_by(Deal.id)).scalars():
        if not _in_scope(deal, since):
            continue
        facts.append(
            DealFacts(
                id=deal.id,
                opportunity_id=deal.opportunity_id,
                status=deal.status,
                error_code=deal.last_error_code,
                plan=deal.plan,
                opportunity=deal.opportunity,
                stripe_customer_id=deal.stripe_customer_id,
                stripe_subscription_id=deal.stripe_subscription_id,
                stripe_invoice_id=deal.stripe_invoice_id,
                invoice_status=deal.invoice_status,
            )
        )
    return facts


def read_grants(session: Session, deal_ids: Iterable[int]) -> list[GrantFacts]:
    wanted = set(deal_ids)
    rows = session.execute(
        select(
            EntitlementGrant.deal_id,
            EntitlementGrant.feature,
            EntitlementGrant.stripe_subscription_id,
        ).where(EntitlementGrant.active.is_(True))
    ).all()
    return [GrantFacts(d, f, s) for d, f, s in rows if d in wanted]


def read_salesforce(
    crm: ReconcileCrm, since: datetime | None, deals: list[DealFacts]
) -> tuple[list[str], dict[str, Any]]:
    """The won opportunity ids since the floor, and each provisioned deal's Opportunity as
    Salesforce has it now (None when it is not found)."""
    won = crm.won_closed_since(since.date() if since else None)
    provisioned = [d.opportunity_id for d in deals if d.status == "done"]
    fresh: dict[str, Any] = dict.fromkeys(provisioned)
    if provisioned:
        for record in crm.fetch_opportunities(provisioned):
            fresh[str(record.get("Id"))] = record
    return won, fresh


def read_stripe(
    billing: ReconcileBilling, since: datetime | None, deals: list[DealFacts]
) -> dict[str, Any]:
    """Every customer, subscription and invoice created since the floor (`listed`), and by
    kind and id (`customer`, `subscription`, `invoice`) those plus each deal's customer and
    subscription (retrieved one by one when older than the floor; None when gone)."""
    listed: list[StripeRecord] = []
    for kind in STRIPE_KINDS:
        listed += billing.list_records(kind, created_since=since)
    by_kind: dict[str, dict[str, StripeRecord | None]] = {k: {} for k in STRIPE_KINDS}
    for record in listed:
        by_kind[record.kind][record.id] = None if record.deleted else record
    for deal in deals:
        if deal.status not in SETTLED or deal.custom:
            continue
        for kind, object_id in (
            ("customer", deal.stripe_customer_id),
            ("subscription", deal.stripe_subscription_id),
        ):
            if object_id and object_id not in by_kind[kind]:
                found = billing.retrieve_record(kind, object_id)
                by_kind[kind][object_id] = None if found is None or found.deleted else found
    return {"listed": listed, **by_kind}

"""What really happened to each demo deal, read back from where it lives.

Nothing here is taken from the demo's own expectations: deal state and grants come from the
database, Stripe objects from the emulator, effective entitlements from the entitlement API over
HTTP, and the written-back fields from the sandbox org.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from sf_bridge.db.models import Deal, EntitlementGrant
from sf_bridge.demo.scenario import DemoDeal


@dataclass
class DealRow:
    """The columns of one deal row the demo shows while it runs."""

    opportunity_id: str
    status: str
    current_step: str | None
    attempts: int
    source: str
    last_error: str | None
    last_error_code: str | None
    completed_at: datetime | None
    updated_at: datetime | None
    writeback_pending: bool = False


@dataclass
class DealFacts:
    deal: DemoDeal
    opportunity_id: str
    account_id: str
    row: DealRow | None = None
    stripe_customer_id: str | None = None
    stripe_subscription_id: str | None = None
    stripe_invoice_id: str | None = None
    invoice_status: str | None = None
    hosted_invoice_url: str | None = None
    invoice_pdf: str | None = None
    plan: dict[str, Any] | None = None
    grants: dict[str, int] = field(default_factory=dict)  # feature -> value granted by this deal
    # a card deal: its payment state, the one its opportunity was last told, and the grants
    # recorded but waiting for the first payment (card_payments: on_first_payment)
    payment_state: str | None = None
    payment_reported: str | None = None
    pending_grants: dict[str, int] = field(default_factory=dict)
    customer: dict[str, Any] | None = None  # from the emulator
    subscription: dict[str, Any] | None = None
    invoice: dict[str, Any] | None = None
    written_back: dict[str, Any] = field(default_factory=dict)  # Opportunity field -> value
    entitlements: dict[str, Any] = field(default_factory=dict)  # from the API, per feature
    entitlements_error: str | None = None
    stripe_schedule_id: str | None = None  # a contract starting later
    schedule: dict[str, Any] | None = None
    contract_start: date | None = None  # the start the demo gave the contract
    grants_from: dict[str, datetime | None] = field(default_factory=dict)  # feature -> from
    closed_at: datetime | None = None  # when the demo clicked Closed Won
    replayed_at: datetime | None = None  # when the demo ran `sf-bridge replay` for it

    @property
    def status(self) -> str:
        return self.row.status if self.row else "not received"

    @property
    def latency_ms(self) -> int | None:
        """Milliseconds from the click (or the replay) to the deal's completion."""
        start = self.replayed_at or self.closed_at
        if self.row is None or self.row.completed_at is None or start is None:
            return None
        return int((self.row.completed_at - start).total_seconds() * 1000)


def reader_engine(database_url: str) -> Engine:
    """A plain engine for reading while the worker writes (no write lock taken on SQLite)."""
    return create_engine(database_url)


def read_rows(engine: Engine, opportunity_ids: list[str]) -> dict[str, DealRow]:
    with Session(engine) as session:
        deals = session.scalars(select(Deal).where(Deal.opportunity_id.in_(opportunity_ids)))
        return {
            d.opportunity_id: DealRow(
                opportunity_id=d.opportunity_id,
                status=d.status,
                current_step=d.current_step,
                attempts=d.attempts,
                source=d.source,
                last_error=d.last_error,
                last_error_code=d.last_error_code,
                completed_at=d.completed_at,
                updated_at=d.updated_at,
                writeback_pending=bool(d.writeback_pending),
            )
            for d in deals
        }


def read_deal(engine: Engine, facts: DealFacts) -> None:
    """Fills the database half of `facts`."""
    with Session(engine) as session:
        deal = session.scalar(select(Deal).where(Deal.opportunity_id == facts.opportunity_id))
        if deal is None:
            facts.row = None
            return
        facts.row = read_rows(engine, [facts.opportunity_id]).get(facts.opportunity_id)
        facts.stripe_customer_id = deal.stripe_customer_id
        facts.stripe_subscription_id = deal.stripe_subscription_id
        facts.stripe_invoice_id = deal.stripe_invoice_id
        facts.invoice_status = deal.invoice_status
        facts.hosted_invoice_url = deal.hosted_invoice_url
        facts.invoice_pdf = deal.invoice_pdf
        facts.plan = deal.plan
        facts.payment_state = deal.payment_state
        facts.payment_reported = deal.payment_reported
        every = list(
            session.scalars(select(EntitlementGrant).where(EntitlementGrant.deal_id == deal.id))
        )
        rows = [g for g in every if g.active]
        facts.grants = {g.feature: g.value for g in rows}
        facts.pending_grants = {g.feature: g.value for g in every if g.pending}
        facts.grants_from = {g.feature: g.valid_from for g in rows}
        facts.stripe_schedule_id = deal.stripe_schedule_id


def _find(objects: list[dict[str, Any]], object_id: str | None) -> dict[str, Any] | None:
    if not object_id:
        return None
    return next((o for o in objects if o.get("id") == object_id), None)


def read_stripe(emulator: Any, facts: DealFacts) -> None:
    """Fills the Stripe half of `facts` from the emulator's own state."""
    facts.customer = _find(emulator.objects("customer"), facts.stripe_customer_id)
    facts.subscription = _find(emulator.objects("subscription"), facts.stripe_subscription_id)
    facts.invoice = _find(emulator.objects("invoice"), facts.stripe_invoice_id)
    facts.schedule = _find(emulator.objects("subscription_schedule"), facts.stripe_schedule_id)


def read_written_back(org: Any, facts: DealFacts, field_names: list[str]) -> None:
    record: dict[str, Any] = org.get_opportunity(facts.opportunity_id) or {}
    facts.written_back = {name: record.get(name) for name in field_names}


def read_entitlements(api_url: str, api_key: str, facts: DealFacts) -> None:
    """Effective entitlements of the deal's account, through the entitlement API over HTTP."""
    url = f"{api_url}/v1/customers/{facts.account_id}/entitlements"
    try:
        response = httpx.get(url, headers=api_headers(api_key), timeout=5.0)
    except httpx.HTTPError as exc:
        facts.entitlements_error = f"GET {url} failed: {exc}"
        return
    if response.status_code != 200:
        facts.entitlements_error = f"GET {url} answered {response.status_code}: {response.text}"
        return
    facts.entitlements = entitlements_by_feature(response.json())
    facts.entitlements_error = None


def api_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "X-API-Key": api_key}


def entitlements_by_feature(body: Any) -> dict[str, Any]:
    """feature -> its entry, from the API's list (or mapping) of entitlements."""
    items: Any = body.get("entitlements", body) if isinstance(body, dict) else body
    if isinstance(items, dict):
        return {str(k): v for k, v in items.items()}
    result: dict[str, Any] = {}
    for item in items or []:
        if isinstance(item, dict) and "feature" in item:
            result[str(item["feature"])] = item
    return result


def entitlement_value(entry: Any) -> Any:
    """The granted value of one API entitlement entry (limit for numbers, access for flags)."""
    if not isinstance(entry, dict):
        return entry
    for key in ("limit", "value"):
        if entry.get(key) is not None:
            return entry[key]
    return entry.get("access")

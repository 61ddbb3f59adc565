"""`sf-bridge invoices mark-paid`: a wire payment recorded in Stripe and in our records.

Marks the invoice `paid_out_of_band` in Stripe, then records it on the deal. Entitlements do
not change: they were granted when the deal was provisioned. Running it twice is harmless: an
invoice Stripe already shows as paid is only recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm import ids
from sf_bridge.db.engine import transaction
from sf_bridge.db.models import Deal
from sf_bridge.invoices.errors import InvoiceNotFound, InvoiceNotPayable
from sf_bridge.invoices.records import deal_for_invoice, record_invoice_status
from sf_bridge.logging import get_logger

if TYPE_CHECKING:
    from sf_bridge.billing.port import BillingGateway

log = get_logger(__name__)

HOW = "paid out of band (wire), recorded with `sf-bridge invoices mark-paid`"


@dataclass(frozen=True)
class MarkPaidResult:
    deal_id: int
    opportunity_id: str
    invoice_id: str
    already_paid: bool  # Stripe showed it paid before this run: nothing was sent
    stripe_request_id: str | None


def _find_deal(session: Session, billing: BillingGateway, ref: str) -> tuple[Deal, str]:
    """The deal and the invoice id `ref` names: an invoice id, a deal id or an opportunity id."""
    ref = ref.strip()
    if ref.startswith("in_"):
        deal = deal_for_invoice(session, ref, None)
        if deal is None:
            invoice = billing.get_invoice(ref)
            deal = deal_for_invoice(session, ref, invoice.subscription)
        if deal is None:
            raise InvoiceNotFound(
                f"Invoice {ref} belongs to no deal sf-bridge provisioned.",
                hint="check the invoice id in Stripe, or pass the deal id or opportunity id "
                "(`sf-bridge deals` lists them).",
            )
        return deal, ref
    deal = None
    number = ids.local_number(ref)
    if number is not None:
        deal = session.get(Deal, number)
    else:
        opp_id = ids.opportunity_id(ref, error=InvoiceNotFound)
        deal = session.scalar(select(Deal).where(Deal.opportunity_id == opp_id))
    if deal is None:
        raise InvoiceNotFound(
            f"No deal {ref!r}.",
            hint="pass an invoice id (in_...), a deal id or an opportunity id; "
            "`sf-bridge deals` lists the deals.",
        )
    if not deal.stripe_invoice_id:
        raise InvoiceNotFound(
            f"Deal {deal.id} (opportunity {deal.opportunity_id}) has no invoice "
            f"(status {deal.status}).",
            hint="custom plans have no invoice; for a deal still provisioning, wait until "
            "`sf-bridge deals show` lists its invoice, then run this again.",
        )
    return deal, deal.stripe_invoice_id


def mark_paid(
    session_factory: sessionmaker[Session], billing: BillingGateway, ref: str
) -> MarkPaidResult:
    """Marks the invoice `ref` names paid out of band in Stripe and records it on its deal."""
    with session_factory() as session:
        deal, invoice_id = _find_deal(session, billing, ref)
        deal_id, opportunity_id = deal.id, deal.opportunity_id
    invoice = billing.get_invoice(invoice_id)
    already_paid = invoice.status == "paid"
    if not already_paid:
        if invoice.status != "open":
            raise InvoiceNotPayable(
                f"Invoice {invoice_id} is {invoice.status}; only an open invoice can be "
                "marked paid.",
                hint="a draft invoice must be finalized first (replay the deal); a void or "
                "uncollectible one needs a new invoice in Stripe.",
            )
        invoice = billing.mark_invoice_paid_out_of_band(
            invoice_id, idempotency_key=f"mark-paid:{invoice_id}"
        )
    with transaction(session_factory) as session:
        deal = session.get_one(Deal, deal_id)
        record_invoice_status(
            session, deal, invoice_id, invoice.status, authoritative=True, how=HOW
        )
    log.info(
        "invoice_marked_paid",
        deal_id=deal_id,
        opportunity_id=opportunity_id,
        invoice_id=invoice_id,
        subscription_id=invoice.subscription,
        already_paid=already_paid,
        stripe_request_id=invoice.request_id,
    )
    return MarkPaidResult(deal_id, opportunity_id, invoice_id, already_paid, invoice.request_id)

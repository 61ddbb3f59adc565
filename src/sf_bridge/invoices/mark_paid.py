"""`sf-bridge invoices mark-paid`: a wire payment recorded in Stripe and in our records.

The payment, the whole amount remaining or part of it (`amount`, in the invoice's currency),
is recorded in Stripe as the pinned API version recommends for payments made outside Stripe:
a payment record attached to the invoice (`BillingGateway.record_payment`); the invoice is
paid once nothing remains (`paid_out_of_band`, the older way, marks only whole invoices).
Then the deal records it. Entitlements do not change: they were granted when the deal was
provisioned. Running it again on a paid invoice is harmless: it is only recorded. A part
payment names its bank `reference` so that running the same command twice records it once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm import ids
from sf_bridge.db.engine import transaction
from sf_bridge.db.models import Deal
from sf_bridge.errors import BillingRejected
from sf_bridge.invoices.errors import InvoiceNotFound, InvoiceNotPayable
from sf_bridge.invoices.records import add_event, deal_for_invoice, record_invoice_status
from sf_bridge.logging import get_logger
from sf_bridge.mapping.money import format_minor, has_more_decimals_than, to_minor_units

if TYPE_CHECKING:
    from sf_bridge.billing.port import BillingGateway, BillingInvoice

log = get_logger(__name__)

HOW = "paid out of band (wire), recorded with `sf-bridge invoices mark-paid`"


@dataclass(frozen=True)
class MarkPaidResult:
    deal_id: int
    opportunity_id: str
    invoice_id: str
    already_paid: bool  # Stripe showed it paid before this run: nothing was sent
    stripe_request_id: str | None
    status: str = "paid"  # "open" after a part payment
    amount_paid: int | None = None  # this run's payment, minor units
    amount_remaining: int | None = None
    currency: str | None = None
    replayed: bool = False  # this payment (same reference) had been recorded already


def _find_deal(session: Session, billing: BillingGateway, ref: str) -> tuple[Deal, str]:
    """The deal and the invoice id `ref` names: an invoice id, a deal id or an opportunity id."""
    ref = ref.strip()
    if ref.startswith("in_"):
        deal = deal_for_invoice(session, ref, None)
        if deal is None:
            try:
                invoice = billing.get_invoice(ref)
            except BillingRejected as exc:
                if "no such invoice" not in exc.message.lower():
                    raise
                raise InvoiceNotFound(
                    f"Stripe has no invoice {ref}.",
                    hint="copy the invoice id (in_...) from the Stripe Dashboard (Invoices, "
                    "search by customer or number), or pass the deal id or opportunity id "
                    "instead (`sf-bridge deals` lists them).",
                ) from exc
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


def _minor_amount(amount: Decimal, currency: str, invoice_id: str, remaining: int) -> int:
    if amount <= 0:
        raise InvoiceNotPayable(
            f"--amount must be more than 0 (got {amount}).",
            hint="pass the amount received, in the invoice's currency, e.g. --amount 1200.00.",
        )
    if has_more_decimals_than(amount, currency):
        raise InvoiceNotPayable(
            f"--amount {amount} has more decimals than {currency.upper()} takes.",
            hint=f"pass the amount as the bank shows it in {currency.upper()}.",
        )
    minor = to_minor_units(amount, currency)
    if minor > remaining:
        raise InvoiceNotPayable(
            f"--amount {format_minor(minor, currency)} is more than the "
            f"{format_minor(remaining, currency)} still due on invoice {invoice_id}.",
            hint="pass at most the amount remaining, or leave out --amount to record the "
            "rest as paid; an overpayment is settled in Stripe (customer balance or refund).",
        )
    return minor


def _key(invoice_id: str, already: int, minor: int, reference: str | None) -> str:
    """Same payment, same key: a bank reference when given (a rerun of the command records
    it once), else what was paid before and this amount (a retry after a lost answer)."""
    if reference:
        digest = hashlib.sha256(reference.strip().encode()).hexdigest()[:24]
        return f"mark-paid:{invoice_id}:ref:{digest}"
    return f"mark-paid:{invoice_id}:{already}:{minor}"


def _record(session: Session, deal: Deal, invoice: BillingInvoice, paid_now: int | None) -> None:
    """On the deal: its invoice paid, or a part payment with what is still due."""
    invoice_id = invoice.id
    if invoice.status == "paid":
        record_invoice_status(
            session, deal, invoice_id, invoice.status, authoritative=True, how=HOW
        )
    else:
        currency = invoice.currency or "usd"
        add_event(
            session,
            deal,
            "invoice_part_paid",
            f"Invoice {invoice_id}: {format_minor(paid_now or 0, currency)} paid out of "
            f"band (wire), {format_minor(invoice.amount_remaining or 0, currency)} still "
            "due; recorded with `sf-bridge invoices mark-paid --amount`.",
            {
                "invoice_id": invoice_id,
                "amount": paid_now,
                "amount_remaining": invoice.amount_remaining,
                "currency": currency,
            },
        )


def mark_paid(
    session_factory: sessionmaker[Session],
    billing: BillingGateway,
    ref: str,
    *,
    amount: Decimal | None = None,
    reference: str | None = None,
) -> MarkPaidResult:
    """Records a payment made outside Stripe on the invoice `ref` names: `amount` (major
    units of the invoice's currency) or, when None, all that remains. Records it on its deal."""
    with session_factory() as session:
        deal, invoice_id = _find_deal(session, billing, ref)
        deal_id, opportunity_id = deal.id, deal.opportunity_id
    invoice = billing.get_invoice(invoice_id)
    already_paid = invoice.status == "paid"
    paid_now: int | None = None
    replayed = False
    if not already_paid:
        if invoice.status != "open":
            raise InvoiceNotPayable(
                f"Invoice {invoice_id} is {invoice.status}; only an open invoice can be "
                "marked paid.",
                hint="a draft invoice must be finalized first (replay the deal); a void or "
                "uncollectible one needs a new invoice in Stripe.",
            )
        currency = invoice.currency or "usd"
        due = invoice.amount_due or 0
        remaining = invoice.amount_remaining if invoice.amount_remaining is not None else due
        already = invoice.amount_paid or 0
        paid_now = (
            remaining if amount is None else _minor_amount(amount, currency, invoice_id, remaining)
        )
        invoice = billing.record_payment(
            invoice_id, paid_now, idempotency_key=_key(invoice_id, already, paid_now, reference)
        )
        # The same key answers with the first recording: the invoice had it already.
        replayed = (invoice.amount_paid or 0) <= already and invoice.status != "paid"
    if not replayed:
        with transaction(session_factory) as session:
            deal = session.get_one(Deal, deal_id)
            _record(session, deal, invoice, paid_now)
    log.info(
        "invoice_marked_paid",
        deal_id=deal_id,
        opportunity_id=opportunity_id,
        invoice_id=invoice_id,
        subscription_id=invoice.subscription,
        already_paid=already_paid,
        amount=paid_now,
        amount_remaining=invoice.amount_remaining,
        status=invoice.status,
        stripe_request_id=invoice.request_id,
    )
    return MarkPaidResult(
        deal_id,
        opportunity_id,
        invoice_id,
        already_paid,
        invoice.request_id,
        status=invoice.status,
        amount_paid=paid_now,
        amount_remaining=invoice.amount_remaining,
        currency=invoice.currency,
        replayed=replayed,
    )

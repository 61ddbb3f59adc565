"""`sf-bridge invoices mark-paid`: a wire payment recorded in Stripe and in our records.

The payment, the whole amount remaining or part of it (`amount`, in the invoice's currency),
is recorded in Stripe as the pinned API version recommends for payments made outside Stripe:
a payment record attached to the invoice (`BillingGateway.record_payment`); the invoice is
paid once nothing remains (`paid_out_of_band`, the older way, marks only whole invoices).
Then the deal records it. Entitlements do not change: they were granted when the deal was
provisioned. Running it again on a paid invoice is harmless: it is only recorded.

Running it twice never records two payments. A payment is identified by its bank
`reference` and amount (without a reference: by its amount on that invoice), sent as the
payment record's `processor_details.custom.payment_reference`. Before sending, the invoice's
payments are read (`BillingGateway.invoice_payments`): one with the same reference and amount
is already recorded, and nothing is sent. Otherwise the request is the same on every try
for that payment (its Idempotency-Key and its times, kept on the deal's history at the first
try), so a retry after a lost answer is answered with the first one's result.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm import ids
from sf_bridge.db.engine import transaction
from sf_bridge.db.models import Deal, DealEvent
from sf_bridge.errors import BillingRejected
from sf_bridge.invoices.errors import InvoiceNotFound, InvoiceNotPayable
from sf_bridge.invoices.records import add_event, deal_for_invoice, record_invoice_status
from sf_bridge.logging import get_logger
from sf_bridge.mapping.money import format_minor, has_more_decimals_than, to_minor_units

if TYPE_CHECKING:
    from sf_bridge.billing.port import BillingGateway, BillingInvoice, InvoicePayment

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


MAX_REFERENCE_LENGTH = 200
# The deal's history line written before a payment is sent: it keeps the first attempt's
# time, which every retry of the same payment sends again (see `_initiated_at`); it stays
# only while the payment is not recorded on the deal (an answer lost on the way).
SENDING = "wire_payment_sending"


def _digest(reference: str) -> str:
    return hashlib.sha256(reference.encode()).hexdigest()[:24]


def _key(invoice_id: str, minor: int, reference: str | None) -> str:
    """Same payment, same key, whatever happened in between: the invoice, the amount and the
    bank reference when given. (Not what was paid before: a retry after a lost answer finds
    the payment counted already, and must still send the same request.)"""
    if reference:
        return f"mark-paid:{invoice_id}:ref:{_digest(reference)}:{minor}"
    return f"mark-paid:{invoice_id}:amount:{minor}"


def _recorded(
    payments: list[InvoicePayment], invoice_id: str, minor: int, reference: str | None, key: str
) -> InvoicePayment | None:
    """The payment already attached to the invoice that this one repeats, by what identifies a
    payment made outside Stripe: its record's `processor_details.custom.payment_reference`
    (the bank reference, or our key when none was given) and its amount. The same bank
    reference with another amount is refused: one transfer has one amount."""
    names = {reference or key}
    if reference:
        names.add(f"mark-paid:{invoice_id}:ref:{_digest(reference)}")  # the form sent before
    for payment in payments:
        if payment.status == "canceled" or payment.reference not in names:
            continue
        if payment.amount != minor and reference:
            currency = payment.currency or "usd"
            raise InvoiceNotPayable(
                f"The payment with reference {reference!r} is recorded on invoice {invoice_id} "
                f"already, for {format_minor(payment.amount, currency)}, not "
                f"{format_minor(minor, currency)}.",
                hint="check the bank reference: another transfer has a reference of its own; "
                "a wrong amount is corrected in Stripe (the invoice's payments).",
            )
        return payment
    return None


def _initiated_at(
    session_factory: sessionmaker[Session],
    deal_id: int,
    invoice: BillingInvoice,
    key: str,
    minor: int,
    reference: str | None,
) -> int:
    """When this payment was first sent, Unix seconds: kept on the deal's history before the
    first attempt and read back by every retry, so that a retry under the same Idempotency-Key
    sends the same parameters (Stripe refuses a key reused with others, and `initiated_at` and
    `guaranteed_at` are required times). The earliest line wins when two runs race. (Deriving
    the time from the invoice instead would claim a time the payment was not made.)"""
    with transaction(session_factory) as session:
        if _sending(session, deal_id, key) is None:
            currency = invoice.currency or "usd"
            session.add(
                DealEvent(
                    deal_id=deal_id,
                    kind=SENDING,
                    message=f"Sending a wire payment of {format_minor(minor, currency)} on "
                    f"invoice {invoice.id} to Stripe"
                    + (f" (reference {reference})." if reference else "."),
                    detail={
                        "invoice_id": invoice.id,
                        "key": key,
                        "amount": minor,
                        "currency": currency,
                        "reference": reference,
                        "initiated_at": int(time.time()),
                    },
                )
            )
    with session_factory() as session:
        first = _sending(session, deal_id, key)
        detail = first.detail if first is not None else None
        if detail is None:  # written above, in its own committed transaction
            raise RuntimeError(f"the first try of payment {key} is not on deal {deal_id}")
        return int(detail["initiated_at"])


def _sending(session: Session, deal_id: int, key: str) -> DealEvent | None:
    events = session.scalars(
        select(DealEvent)
        .where(DealEvent.deal_id == deal_id, DealEvent.kind == SENDING)
        .order_by(DealEvent.id)
    )
    return next((e for e in events if (e.detail or {}).get("key") == key), None)


def _settled(session: Session, deal_id: int, key: str) -> None:
    """The payment is in Stripe and on the deal: its first try's time is needed no more (a
    later run finds the payment among the invoice's), so its line goes and the history keeps
    one line per payment."""
    for event in session.scalars(
        select(DealEvent).where(DealEvent.deal_id == deal_id, DealEvent.kind == SENDING)
    ):
        if (event.detail or {}).get("key") == key:
            session.delete(event)


def _on_deal(session: Session, deal_id: int, key: str) -> bool:
    """Whether the deal's history has this part payment (its line names the key)."""
    events = session.scalars(
        select(DealEvent).where(DealEvent.deal_id == deal_id, DealEvent.kind == PART_PAID)
    )
    return any((e.detail or {}).get("key") == key for e in events)


PART_PAID = "invoice_part_paid"


def _record(
    session: Session, deal: Deal, invoice: BillingInvoice, paid_now: int | None, key: str | None
) -> None:
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
            PART_PAID,
            f"Invoice {invoice_id}: {format_minor(paid_now or 0, currency)} paid out of "
            f"band (wire), {format_minor(invoice.amount_remaining or 0, currency)} still "
            "due; recorded with `sf-bridge invoices mark-paid --amount`.",
            {
                "invoice_id": invoice_id,
                "amount": paid_now,
                "amount_remaining": invoice.amount_remaining,
                "currency": currency,
                "key": key,
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
    if reference is not None:
        reference = reference.strip() or None
    if reference is not None and len(reference) > MAX_REFERENCE_LENGTH:
        raise InvoiceNotPayable(
            f"--reference is {len(reference)} characters long; at most "
            f"{MAX_REFERENCE_LENGTH} are kept.",
            hint="pass the bank's reference of the transfer as the statement shows it.",
        )
    invoice = billing.get_invoice(invoice_id)
    already_paid = invoice.status == "paid"
    paid_now: int | None = None
    replayed = False
    key: str | None = None
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
        paid_now = (
            remaining if amount is None else _minor_amount(amount, currency, invoice_id, remaining)
        )
        key = _key(invoice_id, paid_now, reference)
        # Guarded on Stripe's state, not on the key alone (keys are forgotten after 24 hours):
        # a payment already attached to the invoice is not sent again.
        payments = billing.invoice_payments(invoice_id)
        found = _recorded(payments, invoice_id, paid_now, reference, key)
        if found is None:
            initiated_at = _initiated_at(
                session_factory, deal_id, invoice, key, paid_now, reference
            )
            invoice = billing.record_payment(
                invoice_id,
                paid_now,
                idempotency_key=key,
                reference=reference or key,
                initiated_at=initiated_at,
            )
        else:
            with session_factory() as session:
                # In Stripe, but the answer was lost before the deal recorded it: record it now.
                replayed = found.reference != (reference or key) or _on_deal(session, deal_id, key)
    if key is not None or not replayed:
        with transaction(session_factory) as session:
            if not replayed:
                _record(session, session.get_one(Deal, deal_id), invoice, paid_now, key)
            if key is not None:
                _settled(session, deal_id, key)
    log.info(
        "invoice_marked_paid",
        deal_id=deal_id,
        opportunity_id=opportunity_id,
        invoice_id=invoice_id,
        subscription_id=invoice.subscription,
        already_paid=already_paid,
        already_recorded=replayed,
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

"""A card deal's first payment, and when its entitlements take effect.

A deal charged automatically (`billing.collection_method: charge_automatically`) gets a
subscription that Stripe keeps `incomplete` until its first invoice is paid; unpaid after
23 hours, Stripe voids that invoice and the subscription becomes `incomplete_expired` (a
terminal state). The deal records where that stands in `payment_state`:

    awaiting_payment -> paid        the first invoice was paid (at creation, or later)
    awaiting_payment -> expired     the subscription expired unpaid (the deal is cancelled)

Deals invoiced (`send_invoice`) and custom plans have no payment state: their invoice status
says it. The mapping's `card_payments.entitlements` decides what a card deal awaiting payment
is given: `on_first_payment` (the default) records its grants as pending, not in effect,
until the payment succeeds; `at_once` grants them as the deal completes. Either way the grants
are revoked when the subscription expires unpaid (`sf_bridge.invoices.records`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

CardEntitlements = Literal["on_first_payment", "at_once"]
DEFAULT_CARD_ENTITLEMENTS: CardEntitlements = "on_first_payment"

AWAITING_PAYMENT = "awaiting_payment"
PAID = "paid"
EXPIRED = "expired"
PAYMENT_STATES = (AWAITING_PAYMENT, PAID, EXPIRED)
# The write-back's status text of a provisioned card deal awaiting its first payment (no
# field of its own: the status field says it, within its 40 characters).
PROVISIONED_AWAITING_PAYMENT = "Provisioned, awaiting payment"
# "If the first invoice is not paid within 23 hours, the subscription transitions to
# incomplete_expired. This is a terminal status, the open invoice will be voided"
# (Stripe API reference, the subscription's `status`; docs.stripe.com/changelog/2019-03-14).
UNPAID_EXPIRY = timedelta(hours=23)
# The `deals` list's Invoice column for a card deal, in place of the invoice's status: no
# wider than the column's title, so the list keeps its width.
_CELLS = {AWAITING_PAYMENT: "unpaid", PAID: "paid", EXPIRED: "expired"}


def card_entitlements_of(mappings: Any) -> CardEntitlements:
    value = getattr(mappings, "card_entitlements", None)
    return "at_once" if value == "at_once" else DEFAULT_CARD_ENTITLEMENTS


def first_payment_state(invoice_status: str | None) -> str:
    """The payment state of a card deal whose first invoice is in `invoice_status`."""
    return PAID if invoice_status == PAID else AWAITING_PAYMENT


def grants_wait_for_payment(policy: CardEntitlements, payment_state: str | None) -> bool:
    """Whether the deal's grants are recorded pending rather than in effect."""
    return policy == "on_first_payment" and payment_state == AWAITING_PAYMENT


def describe_payment(payment_state: str | None) -> str | None:
    """The payment state in words, for `deals show`, the console and the write-back."""
    if payment_state == AWAITING_PAYMENT:
        return "awaiting the first card payment"
    if payment_state == PAID:
        return "first card payment received"
    if payment_state == EXPIRED:
        return "expired unpaid"
    return None


def payment_cell(payment_state: str | None, invoice_status: str | None) -> str:
    """The `deals` list's invoice column: a card deal's payment state, else the invoice's."""
    return _CELLS.get(payment_state or "", invoice_status or "")


def pending_for_payment(
    payment_state: str | None,
    payment_reported: str | None,
    grants_pending: int,
    subscription_created_at: datetime | None,
) -> list[str]:
    """What still waits on a card deal's first payment, in words (`deals show`)."""
    if payment_state == AWAITING_PAYMENT:
        lines = []
        if grants_pending:
            lines.append(
                f"{grants_pending} entitlement grant(s) take effect when the first payment "
                "succeeds (card_payments: on_first_payment)"
            )
        if subscription_created_at is not None:
            expires = subscription_created_at + UNPAID_EXPIRY
            lines.append(
                f"unpaid by about {expires:%Y-%m-%d %H:%M} UTC, Stripe expires the subscription "
                "(incomplete_expired): the grants are revoked, the deal cancelled"
            )
        return lines
    if payment_state == PAID and payment_reported == AWAITING_PAYMENT:
        return ['the opportunity still says "Provisioned, awaiting payment": the worker writes '
                '"Provisioned" next']  # fmt: skip
    return []

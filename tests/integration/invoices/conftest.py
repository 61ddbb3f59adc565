"""An in-memory Stripe holding the seeded deal's subscription and invoice."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sf_bridge.billing.memory import InMemoryBilling
from sf_bridge.billing.port import BillingInvoice, BillingSubscription

DUE = datetime(2026, 11, 1, tzinfo=UTC)


def add_subscription(
    billing: InMemoryBilling, subscription_id: str, invoice_id: str, due: datetime = DUE
) -> None:
    billing.subscriptions[subscription_id] = BillingSubscription(
        id=subscription_id,
        customer="cus_test_1",
        status="active",
        latest_invoice=invoice_id,
        collection_method="send_invoice",
    )
    billing.invoices[invoice_id] = BillingInvoice(
        id=invoice_id,
        status="open",
        hosted_invoice_url=f"https://invoice.example/{invoice_id}",
        invoice_pdf=f"https://invoice.example/{invoice_id}/pdf",
        due_date=due,
        subscription=subscription_id,
        customer="cus_test_1",
        amount_due=120_000,
        amount_paid=0,
        amount_remaining=120_000,
        currency="usd",
    )


@pytest.fixture
def billing() -> InMemoryBilling:
    billing = InMemoryBilling()
    add_subscription(billing, "sub_test_1", "in_test_1")
    return billing

"""An in-memory Stripe holding the seeded deal's subscription and invoice, and a deal
provisioned in the Stripe emulator."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.billing.memory import InMemoryBilling
from sf_bridge.billing.port import (
    BillingInvoice,
    BillingSubscription,
    CustomerSpec,
    SubscriptionItemSpec,
    SubscriptionSpec,
)
from sf_bridge.billing.stripe_gateway import StripeGateway
from sf_bridge.sandbox.stripe_emulator import StripeEmulator
from tests.fixtures.api import STANDARD_ENTITLEMENTS, seed_deal
from tests.fixtures.stripe import SAMPLE_CATALOG

DUE = datetime(2026, 11, 1, tzinfo=UTC)
OPP = "006000000000001AAA"


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


@dataclass
class Provisioned:
    gateway: StripeGateway
    subscription_id: str
    invoice_id: str
    deal_id: int
    due_at: datetime


@pytest.fixture
def provisioned(
    stripe_emulator: StripeEmulator, session_factory: sessionmaker[Session]
) -> Provisioned:
    """A customer, a send_invoice subscription and its finalized invoice in the emulator, and
    the deal with its grants in our database, as provisioning leaves them."""
    prices = stripe_emulator.seed_catalog(SAMPLE_CATALOG)
    gateway = StripeGateway(stripe_emulator.api_key, api_base=stripe_emulator.url)
    customer = gateway.create_customer(
        CustomerSpec("Acme Corp", "ap@acme.example", {"sf_account_id": "001000000000001AAA"}),
        idempotency_key="test-customer",
    )
    subscription = gateway.create_subscription(
        SubscriptionSpec(
            customer=customer.id,
            items=[SubscriptionItemSpec(quantity=1, price=prices["pro_monthly"])],
            metadata={"sf_opportunity_id": OPP},
            collection_method="send_invoice",
            days_until_due=30,
        ),
        idempotency_key="test-subscription",
    )
    assert subscription.latest_invoice is not None
    invoice = gateway.finalize_invoice(subscription.latest_invoice, idempotency_key="test-fin")
    assert invoice.status == "open"
    assert invoice.due_date is not None
    _, deal_id = seed_deal(
        session_factory,
        STANDARD_ENTITLEMENTS,
        subscription_id=subscription.id,
        invoice_id=invoice.id,
        invoice_due_at=invoice.due_date,
    )
    return Provisioned(gateway, subscription.id, invoice.id, deal_id, invoice.due_date)

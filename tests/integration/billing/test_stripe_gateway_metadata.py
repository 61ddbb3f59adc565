"""Metadata through the gateway and the real stripe SDK, against an emulator that refuses
what Stripe refuses (values over 500 characters are refused, never cut)."""

from __future__ import annotations

from sf_bridge.billing.metadata import metadata_value
from sf_bridge.billing.port import CustomerSpec, SubscriptionItemSpec, SubscriptionSpec
from sf_bridge.billing.stripe_gateway import StripeGateway
from sf_bridge.sandbox.stripe_emulator import StripeEmulator
from tests.fixtures.stripe import SAMPLE_CATALOG


def test_a_customer_key_longer_than_500_characters_reaches_stripe_shortened(
    stripe_emulator: StripeEmulator,
) -> None:
    """A mapping whose customer identifier is a long Salesforce text field: the customer and
    its subscription are created, tagged with the value cut to 500 characters and its digest."""
    prices = stripe_emulator.seed_catalog(SAMPLE_CATALOG)
    gateway = StripeGateway(stripe_emulator.api_key, api_base=stripe_emulator.url)
    long_key = "ACME-" + "x" * 600
    tags = {
        "sf_account_id": "001000000000001AAA",
        "sf_opportunity_id": "006000000000001AAA",
        "sf_customer_key": long_key,
        "mapping_version": "v1",
    }
    customer = gateway.create_customer(
        CustomerSpec(name="Acme", email=None, metadata=tags), idempotency_key="meta-customer"
    )
    subscription = gateway.create_subscription(
        SubscriptionSpec(
            customer=customer.id,
            items=[SubscriptionItemSpec(quantity=1, price=prices["pro_monthly"])],
            metadata={**tags, "note": "n" * 501},
            collection_method="send_invoice",
            days_until_due=30,
        ),
        idempotency_key="meta-subscription",
    )

    stored = stripe_emulator.get(customer.id)["metadata"]
    assert stored["sf_customer_key"] == metadata_value(long_key)
    assert len(stored["sf_customer_key"]) == 500
    assert stored["sf_account_id"] == "001000000000001AAA"
    sub_tags = stripe_emulator.get(subscription.id)["metadata"]
    assert sub_tags["sf_customer_key"] == stored["sf_customer_key"]
    assert len(sub_tags["note"]) == 500
    # Still found by its tag, as a resumed step looks it up.
    assert gateway.find_customer(customer_key=long_key) is not None

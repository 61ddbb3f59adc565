"""The gateway's requests through the stripe SDK's `raw_request`, answers read as plain JSON:
the same results, request ids, idempotent replays and errors as through the SDK's objects,
and Stripe's proxy settings read from the environment once."""

from __future__ import annotations

import pytest

from sf_bridge.billing.port import CustomerSpec, SubscriptionItemSpec, SubscriptionSpec
from sf_bridge.billing.stripe_gateway import StripeGateway
from sf_bridge.errors import BillingRejected, RateLimitedError, TransientError
from sf_bridge.sandbox.stripe_emulator import StripeEmulator
from tests.fixtures.stripe import SAMPLE_CATALOG

TAGS = {"sf_account_id": "001000000000001AAA", "sf_opportunity_id": "006000000000001AAA"}


def _subscription_spec(customer: str, price: str) -> SubscriptionSpec:
    return SubscriptionSpec(
        customer=customer,
        items=[SubscriptionItemSpec(quantity=3, price=price)],
        metadata=TAGS,
        collection_method="send_invoice",
        days_until_due=30,
    )


def test_customer_subscription_and_invoice_read_from_the_json_answers(
    stripe_emulator: StripeEmulator,
) -> None:
    prices = stripe_emulator.seed_catalog(SAMPLE_CATALOG)
    gateway = StripeGateway(stripe_emulator.api_key, api_base=stripe_emulator.url)
    customer = gateway.create_customer(
        CustomerSpec(name="Acme", email="ap@acme.test", metadata=TAGS), idempotency_key="c-1"
    )
    assert customer.id.startswith("cus_")
    assert (customer.name, customer.email, customer.metadata) == ("Acme", "ap@acme.test", TAGS)
    assert customer.request_id is not None
    assert customer.request_id.startswith("req_")

    subscription = gateway.create_subscription(
        _subscription_spec(customer.id, prices["pro_monthly"]), idempotency_key="s-1"
    )
    assert subscription.customer == customer.id
    assert subscription.collection_method == "send_invoice"
    assert subscription.latest_invoice is not None
    assert subscription.latest_invoice.startswith("in_")
    invoice = gateway.finalize_invoice(subscription.latest_invoice, idempotency_key="f-1")
    assert invoice.status == "open"
    assert invoice.subscription == subscription.id
    assert invoice.customer == customer.id
    assert invoice.amount_due is not None
    assert invoice.amount_due > 0
    assert invoice.request_id is not None
    assert invoice.request_id != subscription.request_id

    found = gateway.find_subscription(sf_opportunity_id=TAGS["sf_opportunity_id"])
    assert found is not None
    assert found.id == subscription.id
    fetched = gateway.get_subscription(subscription.id)
    assert fetched is not None
    assert fetched.metadata == TAGS
    assert gateway.retrieve_record("customer", "cus_doesnotexist") is None
    assert gateway.get_subscription("sub_doesnotexist") is None


def test_a_retried_create_replays_under_its_idempotency_key(
    stripe_emulator: StripeEmulator,
) -> None:
    gateway = StripeGateway(stripe_emulator.api_key, api_base=stripe_emulator.url)
    spec = CustomerSpec(name="Acme", email=None, metadata=TAGS)
    first = gateway.create_customer(spec, idempotency_key="same-key")
    again = gateway.create_customer(spec, idempotency_key="same-key")
    assert again.id == first.id
    assert stripe_emulator.count("customer") == 1
    with pytest.raises(BillingRejected, match="same parameters"):
        gateway.create_customer(
            CustomerSpec(name="Other", email=None, metadata=TAGS), idempotency_key="same-key"
        )


def test_stripe_errors_still_become_sf_bridge_errors(stripe_emulator: StripeEmulator) -> None:
    gateway = StripeGateway(stripe_emulator.api_key, api_base=stripe_emulator.url)
    spec = CustomerSpec(name="Acme", email=None, metadata=TAGS)
    stripe_emulator.fail_next("POST /v1/customers", "rate_limit")
    with pytest.raises(RateLimitedError):
        gateway.create_customer(spec, idempotency_key="k-429")
    stripe_emulator.fail_next("POST /v1/customers", "error")
    with pytest.raises(TransientError, match="HTTP 500"):
        gateway.create_customer(spec, idempotency_key="k-500")
    with pytest.raises(BillingRejected, match="No such customer"):
        gateway.create_subscription(
            _subscription_spec("cus_x", "price_missing"), idempotency_key="s"
        )


def test_the_proxy_settings_of_the_environment_are_honoured(
    stripe_emulator: StripeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy that nothing listens on: requests to the emulator fail through it, and go
    straight to it when NO_PROXY names its host (both read when the gateway is built)."""
    spec = CustomerSpec(name="Acme", email=None, metadata=TAGS)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = StripeGateway(stripe_emulator.api_key, api_base=stripe_emulator.url)
    with pytest.raises(TransientError, match="Could not reach Stripe"):
        proxied.create_customer(spec, idempotency_key="p-1")

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    direct = StripeGateway(stripe_emulator.api_key, api_base=stripe_emulator.url)
    assert direct.create_customer(spec, idempotency_key="p-2").id.startswith("cus_")


def test_a_parameter_raw_request_would_take_as_an_option_is_refused_before_sending(
    stripe_emulator: StripeEmulator,
) -> None:
    """`usage` (a SetupIntent parameter) would be swallowed by raw_request as an option."""
    gateway = StripeGateway(stripe_emulator.api_key, api_base=stripe_emulator.url)
    with pytest.raises(ValueError, match="usage"):
        gateway._request("create a setup intent", "post", "/v1/setup_intents", {"usage": "x"})
    assert gateway.requests == 0

"""The emulator's request log keeps each request's parameters as the SDK sent them, so a test
can say which Stripe requests a deal made and with what (proration, phases, coupon)."""

from __future__ import annotations

import stripe

from sf_bridge.sandbox.stripe_emulator import StripeEmulator


def test_each_request_is_logged_with_its_parameters_as_sent(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    stripe_client.v1.customers.create(
        params={"name": "Acme", "metadata": {"sf_customer_key": "001A/USD"}},
        options={"idempotency_key": "cus-001A"},
    )
    stripe_client.v1.prices.list(params={"lookup_keys": ["team_monthly_usd"], "active": True})
    coupon_route = "POST /v1/coupons"
    stripe_client.v1.coupons.create(
        params={
            "id": "sfb-10pct",
            "percent_off": 10.0,
            "duration": "repeating",
            "duration_in_months": 3,
        },
    )

    [create] = stripe_emulator.requests("POST /v1/customers")
    assert create.method == "POST"
    assert create.idempotency_key == "cus-001A"
    assert create.form == (("name", "Acme"), ("metadata[sf_customer_key]", "001A/USD"))
    assert create.param("metadata[sf_customer_key]") == "001A/USD"
    assert create.param("missing") is None
    [read] = stripe_emulator.requests("GET /v1/prices")
    assert read.path.startswith("/v1/prices?")
    assert read.params == {"lookup_keys[0]": "team_monthly_usd", "active": "true"}
    assert read.idempotency_key is None
    [coupon] = stripe_emulator.requests(coupon_route)
    assert coupon.params == {
        "id": "sfb-10pct",
        "percent_off": "10.0",
        "duration": "repeating",
        "duration_in_months": "3",
    }
    # nothing of the API key is in the log
    key = stripe_emulator.api_key
    assert all(key not in f"{r.path} {r.form}" for r in stripe_emulator.requests())


def test_indices_count_the_entries_of_a_list_parameter(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    stripe_client.v1.products.create(params={"name": "A", "metadata": {"a": "1", "b": "2"}})
    [record] = stripe_emulator.requests("POST /v1/products")
    assert record.indices("metadata") == 2
    assert record.indices("items") == 0

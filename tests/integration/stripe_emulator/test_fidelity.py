"""Fidelity rules: Stripe's object shapes, parameter checking, idempotency and error format."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import stripe

from sf_bridge.sandbox.stripe_emulator import StripeEmulator
from tests.fixtures.stripe import SAMPLE_CATALOG, http_get, pinned_fields

FIXTURES: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parents[2] / "data" / "stripe" / "fixtures.json").read_text()
)["resources"]


def _everything(emu: StripeEmulator, client: stripe.StripeClient) -> None:
    """Creates one of each object type through the API."""
    prices = emu.seed_catalog(SAMPLE_CATALOG)
    customer = client.v1.customers.create(params={"name": "Acme"})
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": prices["pro_monthly"], "quantity": 2}],
            "collection_method": "send_invoice",
            "days_until_due": 30,
        }
    )
    client.v1.invoices.finalize_invoice(str(sub.latest_invoice))


@pytest.mark.parametrize(
    "kind", ["customer", "product", "price", "subscription", "invoice", "event"]
)
def test_objects_have_every_field_of_stripes_fixture(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, kind: str
) -> None:
    _everything(stripe_emulator, stripe_client)
    objects = stripe_emulator.objects(kind)
    assert objects
    expected = pinned_fields(FIXTURES[kind], kind)
    for obj in objects:
        assert set(obj) == expected, kind


def test_nested_objects_match_their_fixtures(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    _everything(stripe_emulator, stripe_client)
    (sub,) = stripe_emulator.objects("subscription")
    (invoice,) = stripe_emulator.objects("invoice")
    item = sub["items"]["data"][0]
    assert set(item) == set(FIXTURES["subscription_item"])
    assert set(item["price"]) == set(FIXTURES["price"])
    assert set(item["plan"]) == set(FIXTURES["plan"])
    assert set(invoice["lines"]["data"][0]) == set(FIXTURES["line_item"])


def test_responses_on_the_wire_carry_every_field(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    customer = stripe_client.v1.customers.create(params={"name": "Wire"})
    raw = customer.last_response.data
    assert set(raw) == set(FIXTURES["customer"])
    assert customer.last_response.headers["Request-Id"].startswith("req_")


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"nmae": "typo"}, "nmae"),
        ({"invoice_settings": {"colour": "red"}}, "invoice_settings[colour]"),
    ],
)
def test_unknown_parameters_are_refused(
    stripe_client: stripe.StripeClient, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.customers.create(params=params)  # type: ignore[arg-type]
    assert caught.value.http_status == 400
    assert caught.value.param == param
    assert caught.value.user_message == f"Received unknown parameter: {param}"
    assert caught.value.error.type == "invalid_request_error"


def test_unknown_nested_item_parameter_names_its_path(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    prices = stripe_emulator.seed_catalog(SAMPLE_CATALOG)
    customer = stripe_client.v1.customers.create(params={"name": "Acme"})
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.subscriptions.create(
            params={
                "customer": customer.id,
                "items": [{"price": prices["pro_monthly"], "qty": 2}],  # type: ignore[typeddict-unknown-key]
            }
        )
    assert caught.value.param == "items[0][qty]"


def test_wrong_types_and_missing_required_params(stripe_client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.customers.list(params={"limit": "many"})  # type: ignore[typeddict-item]
    assert caught.value.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        stripe_client.v1.products.create(params={"description": "no name"})  # type: ignore[typeddict-item]
    assert missing.value.param == "name"
    assert missing.value.code == "parameter_missing"


def test_same_key_same_params_replays_the_first_response(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "deal-006A-customer"}
    first = stripe_client.v1.customers.create(params={"name": "Acme"}, options=options)
    again = stripe_client.v1.customers.create(params={"name": "Acme"}, options=options)
    assert again.id == first.id
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert again.last_response.headers["Original-Request"] == first.last_response.request_id
    assert stripe_emulator.count("customer") == 1


def test_same_key_other_params_is_an_idempotency_error(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "k-1"}
    stripe_client.v1.customers.create(params={"name": "Acme"}, options=options)
    with pytest.raises(stripe.IdempotencyError) as caught:
        stripe_client.v1.customers.create(params={"name": "Other"}, options=options)
    assert caught.value.http_status == 400
    assert "k-1" in caught.value.user_message
    assert stripe_emulator.count("customer") == 1


def test_error_responses_are_replayed_with_their_status(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    prices = stripe_emulator.seed_catalog(SAMPLE_CATALOG)
    stripe_emulator.archive_price("pro_monthly")
    customer = stripe_client.v1.customers.create(params={"name": "Acme"})
    params: stripe.params.SubscriptionCreateParams = {
        "customer": customer.id,
        "items": [{"price": prices["pro_monthly"]}],
    }
    options: stripe.RequestOptions = {"idempotency_key": "sub-1"}
    for replay in (False, True):
        with pytest.raises(stripe.InvalidRequestError) as caught:
            stripe_client.v1.subscriptions.create(params=params, options=options)
        assert caught.value.http_status == 400
        assert caught.value.param == "items[0][price]"
        assert caught.value.user_message.startswith("The price specified is inactive")
        assert (caught.value.headers.get("Idempotent-Replayed") == "true") is replay


def test_idempotency_keys_expire_after_24_hours(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "old-key"}
    first = stripe_client.v1.customers.create(params={"name": "Acme"}, options=options)
    stripe_emulator.advance_clock(24 * 3600 + 1)
    second = stripe_client.v1.customers.create(params={"name": "Acme"}, options=options)
    assert second.id != first.id


def test_missing_or_wrong_api_key_is_401(stripe_emulator: StripeEmulator) -> None:
    bare = http_get(f"{stripe_emulator.url}/v1/customers")
    assert bare.status_code == 401
    assert bare.json()["error"]["type"] == "invalid_request_error"
    assert bare.headers["Request-Id"].startswith("req_")
    client = stripe.StripeClient("sk_test_not_the_key", base_addresses={"api": stripe_emulator.url})
    with pytest.raises(stripe.AuthenticationError):
        client.v1.customers.list()


def test_unrecognized_url_is_404(stripe_emulator: StripeEmulator) -> None:
    response = http_get(
        f"{stripe_emulator.url}/v1/unicorns",
        headers={"Authorization": f"Bearer {stripe_emulator.api_key}"},
    )
    assert response.status_code == 404
    assert "Unrecognized request URL" in response.json()["error"]["message"]


def test_overlong_idempotency_key_is_refused(stripe_client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.customers.create(
            params={"name": "Acme"}, options={"idempotency_key": "k" * 256}
        )
    assert "Idempotency-Key" in caught.value.user_message


def test_start_and_stop_are_cheap() -> None:
    durations = []
    for _ in range(10):
        started = time.perf_counter()
        with StripeEmulator() as emu:
            assert emu.url.startswith("http://127.0.0.1:")
        durations.append(time.perf_counter() - started)
    durations.sort()
    assert durations[len(durations) // 2] < 0.1  # median; typically 2-5 ms


@pytest.mark.parametrize("limit", [0, 101])
def test_list_limit_outside_1_to_100_is_refused(
    stripe_client: stripe.StripeClient, limit: int
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.customers.list(params={"limit": limit})
    assert caught.value.param == "limit"


def test_only_ids_expand(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    _everything(stripe_emulator, stripe_client)
    (sub,) = stripe_emulator.objects("subscription")
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.subscriptions.retrieve(
            sub["id"], params={"expand": ["latest_invoice.lines"]}
        )

"""Stripe's request limits, refused as Stripe refuses them: at most 20 items per subscription,
a missing object named by a parameter (400) or by the URL (404), metadata sizes, and the
invoice shape of the pinned API version (no top-level `invoice.subscription`)."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from sf_bridge.sandbox.stripe_emulator import StripeEmulator
from tests.fixtures.stripe import SAMPLE_CATALOG, http_get


@pytest.fixture
def customer(stripe_client: stripe.StripeClient) -> stripe.Customer:
    return stripe_client.v1.customers.create(params={"name": "Acme"})


@pytest.fixture
def product(stripe_client: stripe.StripeClient) -> stripe.Product:
    return stripe_client.v1.products.create(params={"name": "Seats"})


def _items(product: stripe.Product, count: int) -> list[dict[str, Any]]:
    """`count` inline-priced items of one product (distinct amounts, one currency/interval)."""
    return [
        {
            "price_data": {
                "product": product.id,
                "unit_amount": 1_000 + n,
                "currency": "usd",
                "recurring": {"interval": "month"},
            },
            "quantity": 1,
        }
        for n in range(count)
    ]


def _invoiced(customer_id: str, items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "customer": customer_id,
        "items": items,
        "collection_method": "send_invoice",
        "days_until_due": 30,
        **extra,
    }


# -- at most 20 items per subscription ---------------------------------------------------


def test_a_subscription_of_21_items_is_refused_and_20_are_accepted(
    stripe_emulator: StripeEmulator,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    product: stripe.Product,
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.subscriptions.create(params=_invoiced(customer.id, _items(product, 21)))
    error = caught.value
    assert error.http_status == 400
    assert error.error is not None
    assert error.error.type == "invalid_request_error"
    assert error.param == "items"
    assert error.user_message == "A subscription can have up to 20 items, but you've set 21."
    assert stripe_emulator.count("subscription") == 0
    assert stripe_emulator.count("invoice") == 0

    sub = stripe_client.v1.subscriptions.create(params=_invoiced(customer.id, _items(product, 20)))
    assert len(sub["items"].data) == 20


def test_an_update_that_would_make_21_items_is_refused_and_changes_nothing(
    stripe_emulator: StripeEmulator,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    product: stripe.Product,
) -> None:
    sub = stripe_client.v1.subscriptions.create(params=_invoiced(customer.id, _items(product, 20)))
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.subscriptions.update(sub.id, params={"items": _items(product, 1)})
    assert (caught.value.http_status, caught.value.param) == (400, "items")
    assert "up to 20 items" in str(caught.value.user_message)
    assert len(stripe_emulator.get(sub.id)["items"]["data"]) == 20

    # Replacing one of the 20 (delete one, add one) stays within the limit.
    first = sub["items"].data[0].id
    swapped = stripe_client.v1.subscriptions.update(
        sub.id, params={"items": [{"id": first, "deleted": True}, *_items(product, 1)]}
    )
    assert len(swapped["items"].data) == 20


# -- a missing object: 400 when a parameter names it, 404 when the URL does ---------------


@pytest.mark.parametrize(
    ("params", "param", "message"),
    [
        (
            {"customer": "cus_missing", "items": [{"price": "{price}"}]},
            "customer",
            "No such customer: 'cus_missing'",
        ),
        (
            {"customer": "{customer}", "items": [{"price": "price_missing"}]},
            "items[0][price]",
            "No such price: 'price_missing'",
        ),
        (
            {
                "customer": "{customer}",
                "items": [
                    {
                        "price_data": {
                            "product": "prod_missing",
                            "unit_amount": 100,
                            "currency": "usd",
                            "recurring": {"interval": "month"},
                        }
                    }
                ],
            },
            "items[0][price_data][product]",
            "No such product: 'prod_missing'",
        ),
    ],
)
def test_a_missing_object_named_in_the_body_is_a_400_naming_the_parameter(
    stripe_emulator: StripeEmulator,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    params: dict[str, Any],
    param: str,
    message: str,
) -> None:
    price = stripe_emulator.seed_catalog(SAMPLE_CATALOG)["pro_monthly"]
    body = _fill(params, {"{customer}": customer.id, "{price}": price})
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.subscriptions.create(params=body)
    error = caught.value
    assert (error.http_status, error.code, error.param) == (400, "resource_missing", param)
    assert error.user_message == message
    assert stripe_emulator.count("subscription") == 0


def test_other_missing_parameters_are_400s_and_a_missing_url_object_stays_a_404(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, customer: stripe.Customer
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.prices.create(
            params={"product": "prod_missing", "currency": "usd", "unit_amount": 100}
        )
    assert (caught.value.http_status, caught.value.param) == (400, "product")

    price = stripe_emulator.seed_catalog(SAMPLE_CATALOG)["pro_monthly"]
    sub = stripe_client.v1.subscriptions.create(params=_invoiced(customer.id, [{"price": price}]))
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.subscriptions.update(
            sub.id, params={"items": [{"id": "si_missing", "quantity": 2}]}
        )
    assert (caught.value.http_status, caught.value.code, caught.value.param) == (
        400,
        "resource_missing",
        "items[0][id]",
    )

    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.subscriptions.update("sub_missing", params={"description": "x"})
    assert (caught.value.http_status, caught.value.code, caught.value.param) == (
        404,
        "resource_missing",
        "id",
    )
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.invoices.finalize_invoice("in_missing")
    assert caught.value.http_status == 404


# -- metadata: refused, never cut ------------------------------------------------------------


def test_a_metadata_value_over_500_characters_is_refused_not_cut(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.customers.create(params={"name": "Acme", "metadata": {"note": "x" * 501}})
    error = caught.value
    assert (error.http_status, error.param) == (400, "metadata")
    assert error.user_message == f"Invalid val: {'x' * 501} must be a string under 500 characters"
    assert stripe_emulator.count("customer") == 0

    kept = stripe_client.v1.customers.create(
        params={"name": "Acme", "metadata": {"note": "y" * 500}}
    )
    assert kept.metadata["note"] == "y" * 500
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.customers.update(kept.id, params={"metadata": {"note": "z" * 501}})
    assert stripe_emulator.get(kept.id)["metadata"]["note"] == "y" * 500


def test_metadata_keys_over_40_characters_or_over_50_keys_are_refused(
    stripe_emulator: StripeEmulator,
    stripe_client: stripe.StripeClient,
    customer: stripe.Customer,
    product: stripe.Product,
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.subscriptions.create(
            params=_invoiced(customer.id, _items(product, 1), metadata={"k" * 41: "v"})
        )
    assert (caught.value.http_status, caught.value.param) == (400, "metadata")
    assert caught.value.user_message == (
        f"Invalid key: {'k' * 41} must be a string under 40 characters"
    )

    fifty = {f"key{n}": "v" for n in range(50)}
    sub = stripe_client.v1.subscriptions.create(
        params=_invoiced(customer.id, _items(product, 1), metadata=fifty)
    )
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.subscriptions.update(sub.id, params={"metadata": {"one_more": "v"}})
    assert (caught.value.http_status, caught.value.param) == (400, "metadata")
    assert str(caught.value.user_message).startswith(
        "Metadata can have up to 50 keys, but you've set 51."
    )
    assert len(stripe_emulator.get(sub.id)["metadata"]) == 50


# -- the invoice of the pinned API version ---------------------------------------------------


def test_invoices_name_their_subscription_only_under_parent(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, customer: stripe.Customer
) -> None:
    price = stripe_emulator.seed_catalog(SAMPLE_CATALOG)["pro_monthly"]
    sub = stripe_client.v1.subscriptions.create(params=_invoiced(customer.id, [{"price": price}]))
    invoice_id = str(sub.latest_invoice)

    wire = http_get(
        f"{stripe_emulator.url}/v1/invoices/{invoice_id}",
        headers={"Authorization": f"Bearer {stripe_emulator.api_key}"},
    ).json()
    assert "subscription" not in wire
    assert wire["parent"]["type"] == "subscription_details"
    assert wire["parent"]["subscription_details"]["subscription"] == sub.id
    created = stripe_emulator.events("invoice.created")[0]["data"]["object"]
    assert "subscription" not in created

    # Listing and searching by subscription still find it.
    listed = stripe_client.v1.invoices.list(params={"subscription": sub.id})
    assert [i.id for i in listed.data] == [invoice_id]
    found = stripe_client.v1.invoices.search(params={"query": f"subscription:'{sub.id}'"})
    assert [i.id for i in found.data] == [invoice_id]
    assert stripe_client.v1.invoices.list(params={"subscription": "sub_other"}).data == []


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return names.get(value, value) if isinstance(value, str) else value

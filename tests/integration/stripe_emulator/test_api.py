"""The emulator's API through the real stripe SDK: the objects provisioning creates."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from sf_bridge.sandbox.stripe_emulator import StripeEmulator
from tests.fixtures.stripe import SAMPLE_CATALOG, CatalogEntry, http_get, http_post


@pytest.fixture
def catalog(stripe_catalog: dict[str, str]) -> dict[str, str]:
    return stripe_catalog


def _customer(client: stripe.StripeClient, account: str = "001A") -> stripe.Customer:
    return client.v1.customers.create(
        params={"name": "Acme", "email": "ap@acme.test", "metadata": {"sf_account_id": account}}
    )


def test_customer_create_retrieve_update(stripe_client: stripe.StripeClient) -> None:
    created = _customer(stripe_client)
    assert created.id.startswith("cus_")
    assert created.metadata["sf_account_id"] == "001A"

    updated = stripe_client.v1.customers.update(
        created.id, params={"metadata": {"sf_account_id": "", "tier": "gold"}, "name": "Acme Inc"}
    )
    assert updated.name == "Acme Inc"
    assert updated.metadata.to_dict() == {"tier": "gold"}
    assert stripe_client.v1.customers.retrieve(created.id).name == "Acme Inc"


def test_customer_search_by_metadata(stripe_client: stripe.StripeClient) -> None:
    wanted = _customer(stripe_client, "001WANTED")
    _customer(stripe_client, "001OTHER")

    found = stripe_client.v1.customers.search(
        params={"query": "metadata['sf_account_id']:'001WANTED'"}
    )
    assert [c.id for c in found.data] == [wanted.id]
    none = stripe_client.v1.customers.search(params={"query": "metadata['sf_account_id']:'x'"})
    assert none.data == []


def test_unknown_customer_is_resource_missing(stripe_client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.customers.retrieve("cus_nope")
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"
    assert caught.value.user_message == "No such customer: 'cus_nope'"


def test_prices_by_lookup_key(stripe_client: stripe.StripeClient, catalog: dict[str, str]) -> None:
    prices = stripe_client.v1.prices.list(
        params={"lookup_keys": ["pro_monthly", "starter_monthly"], "active": True}
    )
    assert {p.lookup_key for p in prices.data} == {"pro_monthly", "starter_monthly"}
    pro = next(p for p in prices.data if p.lookup_key == "pro_monthly")
    assert pro.unit_amount == 9_900
    assert pro.recurring.interval == "month"
    assert stripe_client.v1.products.retrieve(pro.product).name == "Pro"


def test_archived_price_leaves_active_list(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, catalog: dict[str, str]
) -> None:
    stripe_emulator.archive_price("pro_monthly")
    active = stripe_client.v1.prices.list(params={"lookup_keys": ["pro_monthly"], "active": True})
    assert active.data == []
    archived = stripe_client.v1.prices.retrieve(catalog["pro_monthly"])
    assert archived.active is False


def test_seed_catalog_is_idempotent_on_lookup_key(stripe_emulator: StripeEmulator) -> None:
    first = stripe_emulator.seed_catalog(SAMPLE_CATALOG)
    second = stripe_emulator.seed_catalog(SAMPLE_CATALOG)
    assert first == second
    assert stripe_emulator.count("price") == len(SAMPLE_CATALOG)
    assert stripe_emulator.count("product") == 3  # Pro monthly and yearly share a product


def test_send_invoice_subscription_with_override_and_finalize(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, catalog: dict[str, str]
) -> None:
    customer = _customer(stripe_client)
    pro = stripe_client.v1.prices.retrieve(catalog["pro_monthly"])
    sub = stripe_client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [
                {"price": pro.id, "quantity": 1},
                {
                    "price_data": {
                        "currency": "usd",
                        "product": pro.product,
                        "unit_amount": 1_000,
                        "recurring": {"interval": "month", "interval_count": 1},
                    },
                    "quantity": 5,
                },
            ],
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "metadata": {"sf_opportunity_id": "006A"},
            "expand": ["latest_invoice"],
        }
    )
    assert sub.status == "active"
    assert [item.quantity for item in sub["items"].data] == [1, 5]
    assert sub["items"].data[1].price.unit_amount == 1_000
    invoice = sub.latest_invoice
    assert isinstance(invoice, stripe.Invoice)
    assert invoice.status == "draft"
    assert invoice.amount_due == 9_900 + 5 * 1_000
    assert invoice.hosted_invoice_url is None

    stripe_emulator.advance_clock(600)
    finalized = stripe_client.v1.invoices.finalize_invoice(invoice.id)
    assert finalized.status == "open"
    assert finalized.number is not None
    assert finalized.due_date == finalized.status_transitions.finalized_at + 30 * 86_400
    assert finalized.hosted_invoice_url.startswith(stripe_emulator.url)
    assert finalized.invoice_pdf.startswith(stripe_emulator.url)
    found = stripe_client.v1.subscriptions.search(
        params={"query": "metadata['sf_opportunity_id']:'006A'"}
    )
    assert [s.id for s in found.data] == [sub.id]
    listed = stripe_client.v1.invoices.list(params={"subscription": sub.id})
    assert [i.id for i in listed.data] == [invoice.id]


def test_hosted_invoice_page_and_pdf_are_served(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, catalog: dict[str, str]
) -> None:
    customer = _customer(stripe_client)
    sub = stripe_client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["starter_monthly"]}],
            "collection_method": "send_invoice",
            "days_until_due": 14,
        }
    )
    invoice = stripe_client.v1.invoices.finalize_invoice(str(sub.latest_invoice))
    page = http_get(invoice.hosted_invoice_url)
    assert page.status_code == 200
    assert invoice.number in page.text
    pdf = http_get(invoice.invoice_pdf)
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")

    paid = http_post(invoice.hosted_invoice_url + "/pay", follow_redirects=False)
    assert paid.status_code == 303
    assert stripe_client.v1.invoices.retrieve(invoice.id).status == "paid"


def test_charge_automatically_without_card_is_incomplete_and_with_card_paid(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, catalog: dict[str, str]
) -> None:
    no_card = _customer(stripe_client, "001NOCARD")
    sub = stripe_client.v1.subscriptions.create(
        params={"customer": no_card.id, "items": [{"price": catalog["pro_monthly"]}]}
    )
    assert sub.status == "incomplete"
    assert stripe_client.v1.invoices.retrieve(str(sub.latest_invoice)).status == "open"

    with_card = stripe_client.v1.customers.create(
        params={"name": "Card Co", "invoice_settings": {"default_payment_method": "pm_card_visa"}}
    )
    paid_sub = stripe_client.v1.subscriptions.create(
        params={"customer": with_card.id, "items": [{"price": catalog["pro_monthly"]}]}
    )
    assert paid_sub.status == "active"
    assert stripe_client.v1.invoices.retrieve(str(paid_sub.latest_invoice)).status == "paid"
    types = [e["type"] for e in stripe_emulator.events() if e["type"].startswith("invoice.")]
    assert types[-3:] == ["invoice.finalized", "invoice.payment_succeeded", "invoice.paid"]


def test_pay_out_of_band_void_and_cancel(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, catalog: dict[str, str]
) -> None:
    customer = _customer(stripe_client)
    sub = stripe_client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["pro_monthly"]}],
            "collection_method": "send_invoice",
            "days_until_due": 30,
        }
    )
    invoice_id = str(sub.latest_invoice)
    sent = stripe_client.v1.invoices.send_invoice(invoice_id)  # finalizes a draft first
    assert sent.status == "open"
    paid = stripe_client.v1.invoices.pay(invoice_id, params={"paid_out_of_band": True})
    assert paid.status == "paid"
    assert paid.amount_remaining == 0
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.invoices.void_invoice(invoice_id)

    canceled = stripe_client.v1.subscriptions.cancel(sub.id)
    assert canceled.status == "canceled"
    assert canceled.canceled_at is not None
    types = [e["type"] for e in stripe_emulator.events()]
    assert types[-1] == "customer.subscription.deleted"
    assert "invoice.paid" in types


def test_void_open_invoice(stripe_client: stripe.StripeClient, catalog: dict[str, str]) -> None:
    customer = _customer(stripe_client)
    sub = stripe_client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["pro_monthly"]}],
            "collection_method": "send_invoice",
            "days_until_due": 30,
        }
    )
    invoice = stripe_client.v1.invoices.finalize_invoice(str(sub.latest_invoice))
    voided = stripe_client.v1.invoices.void_invoice(invoice.id)
    assert voided.status == "void"


def test_subscription_update_changes_quantity_and_metadata(
    stripe_client: stripe.StripeClient, catalog: dict[str, str]
) -> None:
    customer = _customer(stripe_client)
    sub = stripe_client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": catalog["pro_monthly"]}],
                "collection_method": "send_invoice", "days_until_due": 7}
    )  # fmt: skip
    item = sub["items"].data[0]
    updated = stripe_client.v1.subscriptions.update(
        sub.id,
        params={"items": [{"id": item.id, "quantity": 4}], "metadata": {"sf_deal": "2"}},
    )
    assert updated["items"].data[0].quantity == 4
    assert updated.metadata["sf_deal"] == "2"


def test_mismatched_intervals_are_refused(
    stripe_client: stripe.StripeClient, catalog: dict[str, str]
) -> None:
    customer = _customer(stripe_client)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.subscriptions.create(
            params={
                "customer": customer.id,
                "items": [{"price": catalog["pro_monthly"]}, {"price": catalog["pro_yearly"]}],
            }
        )
    assert caught.value.param == "items"


def test_expand_customer_and_nested_product(
    stripe_client: stripe.StripeClient, catalog: dict[str, str]
) -> None:
    customer = _customer(stripe_client)
    sub = stripe_client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["starter_monthly"]}],
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "expand": ["customer", "items.data.price.product"],
        }
    )
    assert sub.customer.id == customer.id
    assert sub["items"].data[0].price.product.name == "Starter"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.subscriptions.retrieve(sub.id, params={"expand": ["status"]})
    assert caught.value.param == "expand"


def test_events_list_and_retrieve(
    stripe_client: stripe.StripeClient, catalog: dict[str, str]
) -> None:
    customer = _customer(stripe_client)
    events = stripe_client.v1.events.list(params={"type": "customer.created"})
    assert [e.data.object.id for e in events.data] == [customer.id]
    event = stripe_client.v1.events.retrieve(events.data[0].id)
    assert event.type == "customer.created"
    assert event.request.id is not None


def test_list_pagination(stripe_client: stripe.StripeClient) -> None:
    ids = [_customer(stripe_client, f"001{i}").id for i in range(5)]
    first = stripe_client.v1.customers.list(params={"limit": 2})
    assert first.has_more is True
    assert [c.id for c in first.data] == ids[::-1][:2]
    every = [c.id for c in first.auto_paging_iter()]
    assert every == ids[::-1]


def test_catalog_entry_currency_is_lowercased(stripe_emulator: StripeEmulator) -> None:
    stripe_emulator.seed_catalog([CatalogEntry("eu_pro", "Pro EU", 9_000, currency="EUR")])
    (price,) = stripe_emulator.objects("price")
    assert price["currency"] == "eur"


def _price_data(product: str, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "currency": "usd",
        "product": product,
        "unit_amount": 1_000,
        "recurring": {"interval": "month"},
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"currency": "dollars"}, "items[0][price_data][currency]"),
        ({"unit_amount": 100_000_000}, "items[0][price_data][unit_amount]"),
        ({"recurring": {"interval": "fortnight"}}, "items[0][price_data][recurring][interval]"),
        (
            {"recurring": {"interval": "month", "interval_count": 37}},
            "items[0][price_data][recurring][interval_count]",
        ),
    ],
)
def test_bad_inline_prices_are_refused_with_their_param(
    stripe_client: stripe.StripeClient,
    catalog: dict[str, str],
    overrides: dict[str, Any],
    param: str,
) -> None:
    customer = _customer(stripe_client)
    product = stripe_client.v1.prices.retrieve(catalog["pro_monthly"]).product
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.subscriptions.create(
            params={
                "customer": customer.id,
                "items": [{"price_data": _price_data(product, **overrides)}],
            }
        )
    assert caught.value.param == param


def test_unknown_collection_method_is_refused(
    stripe_client: stripe.StripeClient, catalog: dict[str, str]
) -> None:
    customer = _customer(stripe_client)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.subscriptions.create(
            params={
                "customer": customer.id,
                "items": [{"price": catalog["pro_monthly"]}],
                "collection_method": "invoice",
            }
        )
    assert caught.value.param == "collection_method"


def test_one_customer_is_billed_in_one_currency_while_anything_is_live(
    stripe_client: stripe.StripeClient, catalog: dict[str, str]
) -> None:
    customer = _customer(stripe_client)
    product = stripe_client.v1.prices.retrieve(catalog["pro_monthly"]).product
    terms: dict[str, Any] = {"collection_method": "send_invoice", "days_until_due": 30}
    usd = stripe_client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": catalog["pro_monthly"]}], **terms}
    )
    eur_items = [{"price_data": _price_data(product, currency="eur")}]
    with pytest.raises(stripe.InvalidRequestError, match="combine currencies"):
        stripe_client.v1.subscriptions.create(
            params={"customer": customer.id, "items": eur_items, **terms}
        )
    stripe_client.v1.subscriptions.cancel(usd.id)
    stripe_client.v1.invoices.finalize_invoice(str(usd.latest_invoice))
    stripe_client.v1.invoices.void_invoice(str(usd.latest_invoice))
    eur = stripe_client.v1.subscriptions.create(
        params={"customer": customer.id, "items": eur_items, **terms}
    )
    assert eur.currency == "eur"
    assert stripe_client.v1.customers.retrieve(customer.id).currency == "eur"


def test_refused_requests_leave_nothing_behind(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, catalog: dict[str, str]
) -> None:
    customer = _customer(stripe_client)
    product = stripe_client.v1.prices.retrieve(catalog["pro_monthly"]).product
    prices_before = stripe_emulator.count("price")
    yearly_inline = _price_data(product, recurring={"interval": "year"})
    with pytest.raises(stripe.InvalidRequestError):  # monthly and yearly items do not mix
        stripe_client.v1.subscriptions.create(
            params={
                "customer": customer.id,
                "items": [{"price": catalog["pro_monthly"]}, {"price_data": yearly_inline}],
            }
        )
    assert stripe_emulator.count("price") == prices_before
    assert stripe_emulator.count("subscription") == 0

    sub = stripe_client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": catalog["pro_monthly"], "quantity": 2}],
            "collection_method": "send_invoice",
            "days_until_due": 30,
        }
    )
    item = sub["items"].data[0]
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.subscriptions.update(
            sub.id,
            params={
                "metadata": {"changed": "yes"},
                "items": [{"id": item.id, "quantity": 5}, {"price_data": yearly_inline}],
            },
        )
    unchanged = stripe_client.v1.subscriptions.retrieve(sub.id)
    assert unchanged["items"].data[0].quantity == 2
    assert "changed" not in unchanged.metadata
    assert stripe_emulator.count("price") == prices_before


def test_declined_card_with_error_if_incomplete_creates_nothing(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, catalog: dict[str, str]
) -> None:
    customer = stripe_client.v1.customers.create(
        params={"invoice_settings": {"default_payment_method": "pm_card_chargeCustomerFail"}}
    )
    items = [{"price": catalog["pro_monthly"]}]
    with pytest.raises(stripe.CardError):
        stripe_client.v1.subscriptions.create(
            params={
                "customer": customer.id,
                "items": items,
                "payment_behavior": "error_if_incomplete",
            }
        )
    assert stripe_emulator.count("subscription") == 0
    declined = stripe_client.v1.subscriptions.create(
        params={"customer": customer.id, "items": items}
    )
    assert declined.status == "incomplete"
    assert stripe_emulator.events("invoice.payment_failed")


def test_refused_updates_change_nothing(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    customer = _customer(stripe_client)
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.customers.update(
            customer.id, params={"name": "Renamed", "metadata": {"k" * 41: "too long a key"}}
        )
    assert stripe_client.v1.customers.retrieve(customer.id).name == "Acme"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.products.create(
            params={"name": "Orphan", "default_price_data": {"currency": "usd"}}
        )
    assert caught.value.param == "default_price_data[unit_amount]"
    assert stripe_emulator.count("product") == 0

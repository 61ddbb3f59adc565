"""Changing a live subscription on the emulator through the real SDK: item updates with
prorations, coupons and discounts, invoice previews, partial payments made outside Stripe."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from sf_bridge.sandbox.stripe_emulator import StripeEmulator

DAY = 86_400


def _subscription(
    client: stripe.StripeClient, catalog: dict[str, str], **extra: Any
) -> stripe.Subscription:
    customer = client.v1.customers.create(params={"name": "Acme"})
    params: dict[str, Any] = {
        "customer": customer.id,
        "items": [{"price": catalog["pro_monthly"], "quantity": 2}],
        "collection_method": "send_invoice",
        "days_until_due": 30,
        **extra,
    }
    return client.v1.subscriptions.create(params=params)  # type: ignore[arg-type]


def _halfway(emu: StripeEmulator, sub: stripe.Subscription) -> tuple[int, int, int]:
    item = sub["items"]["data"][0]
    start, end = item["current_period_start"], item["current_period_end"]
    at = start + 10 * DAY
    emu.advance_clock(10 * DAY + 5)
    return start, end, at


def _expected(amount: int, start: int, end: int, at: int) -> int:
    return round(amount * (end - at) / (end - start))


def test_quantity_change_creates_pending_prorations_for_the_next_invoice(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    sub = _subscription(stripe_client, stripe_catalog)
    start, end, at = _halfway(stripe_emulator, sub)
    item_id = sub["items"]["data"][0]["id"]
    invoices_before = len(stripe_emulator.objects("invoice"))

    updated = stripe_client.v1.subscriptions.update(
        sub.id,
        params={"items": [{"id": item_id, "quantity": 5}], "proration_date": at},
    )

    assert updated["items"]["data"][0]["quantity"] == 5
    assert len(stripe_emulator.objects("invoice")) == invoices_before  # nothing invoiced now
    pending = stripe_emulator.objects("invoiceitem")
    assert sorted(ii["amount"] for ii in pending) == sorted(
        [-_expected(2 * 9_900, start, end, at), _expected(5 * 9_900, start, end, at)]
    )
    assert all(ii["proration"] and ii["invoice"] is None for ii in pending)

    stripe_emulator.advance_clock(end - at)  # the period ends: the renewal carries them
    renewal = stripe_client.v1.invoices.list(params={"subscription": sub.id}).data[0]
    lines = renewal.lines.data
    prorated = [line for line in lines if line.parent.subscription_item_details.proration]
    assert len(prorated) == 2
    assert renewal.amount_due == 5 * 9_900 + sum(line.amount for line in prorated)


def test_always_invoice_bills_the_proration_now_and_none_makes_nothing(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    sub = _subscription(stripe_client, stripe_catalog)
    start, end, at = _halfway(stripe_emulator, sub)
    item_id = sub["items"]["data"][0]["id"]

    stripe_client.v1.subscriptions.update(
        sub.id, params={"items": [{"id": item_id, "quantity": 3}], "proration_behavior": "none"}
    )
    assert stripe_emulator.objects("invoiceitem") == []

    updated = stripe_client.v1.subscriptions.update(
        sub.id,
        params={
            "items": [
                {"id": item_id, "deleted": True},
                {"price": stripe_catalog["starter_monthly"], "quantity": 1},
            ],
            "proration_behavior": "always_invoice",
            "proration_date": at,
        },
    )
    invoice = stripe_client.v1.invoices.retrieve(str(updated.latest_invoice))
    assert invoice.billing_reason == "subscription_update"
    assert invoice.status == "draft"  # send_invoice: finalized later, as any draft
    assert invoice.amount_due == 0  # the credit exceeds the new charge
    assert invoice.total == _expected(2_900, start, end, at) - _expected(3 * 9_900, start, end, at)
    assert {line.amount for line in invoice.lines.data} == {
        -_expected(3 * 9_900, start, end, at),
        _expected(2_900, start, end, at),
    }
    assert [i["price"]["id"] for i in updated["items"]["data"]] == [
        stripe_catalog["starter_monthly"]
    ]


def test_update_refuses_more_than_twenty_items_and_unknown_behaviours(
    stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    sub = _subscription(stripe_client, stripe_catalog)
    many = [{"price": stripe_catalog["starter_monthly"], "quantity": 1}] * 20
    with pytest.raises(stripe.InvalidRequestError, match="up to 20 items"):
        stripe_client.v1.subscriptions.update(sub.id, params={"items": many})
    with pytest.raises(stripe.InvalidRequestError, match="proration_behavior"):
        stripe_client.v1.subscriptions.update(sub.id, params={"proration_behavior": "sometimes"})


def test_coupons_discount_the_invoice_while_they_last(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    percent = stripe_client.v1.coupons.create(
        params={
            "id": "deal-42-ramp",
            "percent_off": 10,
            "duration": "repeating",
            "duration_in_months": 1,
        }
    )
    assert percent.id == "deal-42-ramp"
    assert percent.percent_off == 10
    with pytest.raises(stripe.InvalidRequestError, match="already exists"):
        stripe_client.v1.coupons.create(params={"id": "deal-42-ramp", "percent_off": 5})
    with pytest.raises(stripe.InvalidRequestError, match="currency"):
        stripe_client.v1.coupons.create(params={"amount_off": 500})

    sub = _subscription(stripe_client, stripe_catalog, discounts=[{"coupon": percent.id}])
    first = stripe_client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert first.subtotal == 19_800
    assert first.total == 19_800 - 1_980
    assert first.amount_due == 17_820
    (applied,) = first.total_discount_amounts
    assert applied.amount == 1_980
    assert applied.discount == sub.discounts[0]
    assert first.lines.data[0].discount_amounts[0].amount == 1_980
    discount = stripe_emulator.get(str(sub.discounts[0]))
    assert discount["source"] == {"coupon": "deal-42-ramp", "type": "coupon"}

    item = sub["items"]["data"][0]
    stripe_emulator.advance_clock(item["current_period_end"] - item["current_period_start"] + 5)
    renewal = stripe_client.v1.invoices.list(params={"subscription": sub.id}).data[0]
    assert renewal.id != first.id
    assert renewal.total_discount_amounts == []  # one month only: over
    assert renewal.amount_due == 19_800


def test_amount_off_coupon_applied_by_update(
    stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    coupon = stripe_client.v1.coupons.create(
        params={"amount_off": 5_000, "currency": "usd", "duration": "forever"}
    )
    sub = _subscription(stripe_client, stripe_catalog)
    updated = stripe_client.v1.subscriptions.update(
        sub.id, params={"discounts": [{"coupon": coupon.id}], "metadata": {"deal": "42"}}
    )
    assert len(updated.discounts) == 1
    assert updated.metadata["deal"] == "42"
    preview = stripe_client.v1.invoices.create_preview(params={"subscription": sub.id})
    assert preview.amount_due == 19_800 - 5_000


def test_preview_shows_the_change_and_creates_nothing(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    _subscription(stripe_client, stripe_catalog)  # another customer's, left alone too
    sub = _subscription(stripe_client, stripe_catalog)
    start, end, at = _halfway(stripe_emulator, sub)
    item_id = sub["items"]["data"][0]["id"]
    before = {kind: stripe_emulator.objects(kind) for kind in
              ("subscription", "invoice", "invoiceitem", "event", "price", "customer",
               "discount", "coupon")}  # fmt: skip

    preview = stripe_client.v1.invoices.create_preview(
        params={
            "subscription": sub.id,
            "subscription_details": {
                "items": [{"id": item_id, "quantity": 4}],
                "proration_behavior": "always_invoice",
                "proration_date": at,
            },
        }
    )
    assert preview.id.startswith("upcoming_")
    assert preview.amount_due == _expected(2 * 9_900, start, end, at)  # 4 - 2 seats, prorated
    assert all(line.parent.subscription_item_details.proration for line in preview.lines.data)

    renewal = stripe_client.v1.invoices.create_preview(
        params={
            "subscription": sub.id,
            "subscription_details": {"items": [{"id": item_id, "quantity": 4}]},
        }
    )
    assert any(line.amount == 4 * 9_900 for line in renewal.lines.data)
    after = {kind: stripe_emulator.objects(kind) for kind in before}
    assert after == before
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.invoices.retrieve(preview.id)


def _open_invoice(stripe_client: stripe.StripeClient, catalog: dict[str, str]) -> stripe.Invoice:
    sub = _subscription(stripe_client, catalog)
    return stripe_client.v1.invoices.finalize_invoice(str(sub.latest_invoice))


def _report(client: stripe.StripeClient, invoice: stripe.Invoice, value: int) -> str:
    record = client.v1.payment_records.report_payment(
        params={
            "amount_requested": {"currency": "usd", "value": value},
            "initiated_at": 1_700_000_000,
            "outcome": "guaranteed",
            "guaranteed": {"guaranteed_at": 1_700_000_000},
            "customer_details": {"customer": str(invoice.customer)},
            "payment_method_details": {"type": "custom", "custom": {"display_name": "Wire"}},
            "processor_details": {
                "type": "custom",
                "custom": {"payment_reference": "WIRE-1"},
            },
        }
    )
    assert record.amount_guaranteed.value == value
    return record.id


def test_partial_payments_outside_stripe_until_the_invoice_is_paid(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    invoice = _open_invoice(stripe_client, stripe_catalog)
    assert invoice.amount_due == 19_800

    part = stripe_client.v1.invoices.attach_payment(
        invoice.id, params={"payment_record": _report(stripe_client, invoice, 8_000)}
    )
    assert (part.status, part.amount_paid, part.amount_remaining) == ("open", 8_000, 11_800)

    with pytest.raises(stripe.InvalidRequestError, match="exceeds"):
        stripe_client.v1.invoices.attach_payment(
            invoice.id, params={"payment_record": _report(stripe_client, invoice, 20_000)}
        )
    record = _report(stripe_client, invoice, 11_800)
    rest = stripe_client.v1.invoices.attach_payment(invoice.id, params={"payment_record": record})
    assert (rest.status, rest.amount_paid, rest.amount_remaining) == ("paid", 19_800, 0)
    types = [e["type"] for e in stripe_emulator.objects("event")]
    assert types.count("invoice_payment.paid") == 2
    assert types.count("invoice.paid") == 1
    with pytest.raises(stripe.InvalidRequestError, match="open invoice"):
        stripe_client.v1.invoices.attach_payment(invoice.id, params={"payment_record": record})


def test_an_invoices_payments_are_listed_with_their_records(
    stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    """`GET /v1/invoice_payments?invoice=...` lists the payments attached to the invoice,
    newest first; `expand[]=data.payment.payment_record` shows each record's reference."""
    invoice = _open_invoice(stripe_client, stripe_catalog)
    other = _open_invoice(stripe_client, stripe_catalog)
    assert stripe_client.v1.invoice_payments.list(params={"invoice": invoice.id}).data == []
    first = _report(stripe_client, invoice, 8_000)
    stripe_client.v1.invoices.attach_payment(invoice.id, params={"payment_record": first})
    second = _report(stripe_client, invoice, 1_000)
    stripe_client.v1.invoices.attach_payment(invoice.id, params={"payment_record": second})
    stripe_client.v1.invoices.attach_payment(
        other.id, params={"payment_record": _report(stripe_client, other, 500)}
    )
    _report(stripe_client, invoice, 700)  # reported, never attached: not a payment of it

    listed = stripe_client.v1.invoice_payments.list(
        params={
            "invoice": invoice.id,
            "payment": {"type": "payment_record"},
            "expand": ["data.payment.payment_record"],
        }
    )
    assert [p.payment.payment_record.id for p in listed.data] == [second, first]
    assert [(p.amount_paid, p.currency, p.status) for p in listed.data] == [
        (1_000, "usd", "paid"),
        (8_000, "usd", "paid"),
    ]
    record = listed.data[0].payment.payment_record
    assert record.processor_details.custom.payment_reference == "WIRE-1"
    one = stripe_client.v1.invoice_payments.list(
        params={
            "invoice": invoice.id,
            "payment": {"type": "payment_record", "payment_record": first},
        }
    )
    assert [p.payment.payment_record for p in one.data] == [first]
    again = stripe_client.v1.invoice_payments.retrieve(listed.data[1].id)
    assert (again.invoice, again.amount_paid) == (invoice.id, 8_000)


def test_a_payment_reported_again_under_its_key_with_other_times_is_refused(
    stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    """Stripe: the idempotency layer compares incoming parameters to those of the original
    request and errors if they are not the same (400, `idempotency_error`)."""
    invoice = _open_invoice(stripe_client, stripe_catalog)
    params: dict[str, Any] = {
        "amount_requested": {"currency": "usd", "value": 8_000},
        "initiated_at": 1_700_000_000,
        "payment_method_details": {"type": "custom", "custom": {"display_name": "Wire"}},
        "customer_details": {"customer": str(invoice.customer)},
    }
    options: dict[str, Any] = {"idempotency_key": "wire-W1"}
    first = stripe_client.v1.payment_records.report_payment(params, options)  # type: ignore[arg-type]
    again = stripe_client.v1.payment_records.report_payment(params, options)  # type: ignore[arg-type]
    assert again.id == first.id
    later = {**params, "initiated_at": 1_700_000_001}
    with pytest.raises(stripe.IdempotencyError) as refused:
        stripe_client.v1.payment_records.report_payment(later, options)  # type: ignore[arg-type]
    assert refused.value.http_status == 400
    assert refused.value.error is not None
    assert refused.value.error.type == "idempotency_error"
    assert str(refused.value.user_message).startswith(
        "Keys for idempotent requests can only be used with the same parameters"
    )


def test_a_refused_update_changes_nothing(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    sub = _subscription(stripe_client, stripe_catalog)
    _halfway(stripe_emulator, sub)
    item_id = sub["items"]["data"][0]["id"]
    with pytest.raises(stripe.InvalidRequestError, match="No such coupon"):
        stripe_client.v1.subscriptions.update(
            sub.id,
            params={"items": [{"id": item_id, "quantity": 9}], "discounts": [{"coupon": "nope"}]},
        )
    assert stripe_client.v1.subscriptions.retrieve(sub.id)["items"]["data"][0]["quantity"] == 2
    assert stripe_emulator.objects("invoiceitem") == []
    assert stripe_emulator.objects("discount") == []

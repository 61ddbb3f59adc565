"""Subscription schedules on the emulator through the real SDK: phases move on the
emulator's clock, starting, changing and ending the subscription with Stripe's events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import stripe

from sf_bridge.sandbox.stripe_emulator import StripeEmulator

DAY = 86_400


def _customer(client: stripe.StripeClient) -> str:
    return client.v1.customers.create(params={"name": "Acme"}).id


def _types(emu: StripeEmulator) -> list[str]:
    return [event["type"] for event in emu.objects("event")]


def test_a_ramp_starts_later_changes_price_and_cancels_at_the_end(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    customer = _customer(stripe_client)
    now = stripe_emulator.clock()
    start = now + 5 * DAY
    schedule = stripe_client.v1.subscription_schedules.create(
        params={
            "customer": customer,
            "start_date": start,
            "end_behavior": "cancel",
            "default_settings": {
                "collection_method": "send_invoice",
                "invoice_settings": {"days_until_due": 30},
            },
            "metadata": {"sf_opportunity_id": "006RAMP"},
            "phases": [
                {
                    "items": [{"price": stripe_catalog["pro_monthly"], "quantity": 2}],
                    "duration": {"interval": "month", "interval_count": 1},
                    "metadata": {"sf_opportunity_id": "006RAMP"},
                },
                {
                    "items": [{"price": stripe_catalog["starter_monthly"], "quantity": 1}],
                    "duration": {"interval": "month", "interval_count": 1},
                },
            ],
        }
    )
    assert schedule.status == "not_started"
    assert schedule.subscription is None
    assert stripe_emulator.objects("subscription") == []
    first_end = schedule.phases[0].end_date
    assert schedule.phases[1].start_date == first_end

    stripe_emulator.advance_clock(5 * DAY + 1)
    started = stripe_client.v1.subscription_schedules.retrieve(schedule.id)
    assert started.status == "active"
    sub = stripe_client.v1.subscriptions.retrieve(str(started.subscription))
    assert sub.schedule == schedule.id
    assert sub.start_date == start  # backdated to the schedule's start
    assert sub.metadata["sf_opportunity_id"] == "006RAMP"
    first = stripe_client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert first.amount_due == 2 * 9_900

    stripe_emulator.advance_clock(first_end - stripe_emulator.clock() + 1)
    sub = stripe_client.v1.subscriptions.retrieve(sub.id)
    assert [(i.price.id, i.quantity) for i in sub["items"].data] == [
        (stripe_catalog["starter_monthly"], 1)
    ]
    renewal = stripe_client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert renewal.billing_reason == "subscription_cycle"
    assert renewal.amount_due == 2_900  # the new phase's price, no proration

    end = stripe_client.v1.subscription_schedules.retrieve(schedule.id).phases[1].end_date
    stripe_emulator.advance_clock(end - stripe_emulator.clock() + 1)
    done = stripe_client.v1.subscription_schedules.retrieve(schedule.id)
    assert done.status == "completed"
    assert stripe_client.v1.subscriptions.retrieve(sub.id).status == "canceled"
    types = _types(stripe_emulator)
    for expected in (
        "subscription_schedule.created",
        "subscription_schedule.updated",
        "subscription_schedule.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.created",
    ):
        assert expected in types, expected
    assert types.index("subscription_schedule.created") < types.index(
        "customer.subscription.created"
    )


def test_from_subscription_update_release_and_cancel(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    customer = _customer(stripe_client)
    sub = stripe_client.v1.subscriptions.create(
        params={
            "customer": customer,
            "items": [{"price": stripe_catalog["pro_monthly"], "quantity": 3}],
            "collection_method": "send_invoice",
            "days_until_due": 30,
        }
    )
    schedule = stripe_client.v1.subscription_schedules.create(params={"from_subscription": sub.id})
    assert (schedule.status, schedule.subscription) == ("active", sub.id)
    assert stripe_client.v1.subscriptions.retrieve(sub.id).schedule == schedule.id
    with pytest.raises(stripe.InvalidRequestError, match="already attached"):
        stripe_client.v1.subscription_schedules.create(params={"from_subscription": sub.id})

    current = schedule.phases[0]
    updated = stripe_client.v1.subscription_schedules.update(
        schedule.id,
        params={
            "phases": [
                {
                    "start_date": current.start_date,
                    "end_date": current.end_date,
                    "items": [{"price": stripe_catalog["pro_monthly"], "quantity": 3}],
                },
                {
                    "items": [{"price": stripe_catalog["pro_monthly"], "quantity": 5}],
                    "duration": {"interval": "month", "interval_count": 12},
                },
            ],
            "metadata": {"sf_opportunity_id": "006UPSELL"},
        },
    )
    assert [p.items[0].quantity for p in updated.phases] == [3, 5]
    listed = stripe_client.v1.subscription_schedules.list(params={"customer": customer})
    assert [s.id for s in listed.data] == [schedule.id]
    assert listed.data[0].metadata["sf_opportunity_id"] == "006UPSELL"

    released = stripe_client.v1.subscription_schedules.release(schedule.id)
    assert (released.status, released.released_subscription) == ("released", sub.id)
    assert stripe_client.v1.subscriptions.retrieve(sub.id).schedule is None
    assert stripe_client.v1.subscriptions.retrieve(sub.id).status == "active"
    with pytest.raises(stripe.InvalidRequestError, match="released"):
        stripe_client.v1.subscription_schedules.cancel(schedule.id)

    again = stripe_client.v1.subscription_schedules.create(params={"from_subscription": sub.id})
    canceled = stripe_client.v1.subscription_schedules.cancel(again.id)
    assert canceled.status == "canceled"
    assert stripe_client.v1.subscriptions.retrieve(sub.id).status == "canceled"
    assert "subscription_schedule.released" in _types(stripe_emulator)
    assert "subscription_schedule.canceled" in _types(stripe_emulator)


def test_schedule_refuses_phases_it_cannot_place(
    stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    customer = _customer(stripe_client)
    item = {"price": stripe_catalog["pro_monthly"], "quantity": 1}
    with pytest.raises(stripe.InvalidRequestError, match="end_date or a duration"):
        stripe_client.v1.subscription_schedules.create(
            params={"customer": customer, "phases": [{"items": [item]}, {"items": [item]}]}
        )
    with pytest.raises(stripe.InvalidRequestError, match="end_behavior"):
        stripe_client.v1.subscription_schedules.create(
            params={"customer": customer, "end_behavior": "renew", "phases": [{"items": [item]}]}
        )


def test_new_objects_have_every_field_of_stripes_fixture(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    fixtures = json.loads(
        (Path(__file__).parents[2] / "data" / "stripe" / "fixtures.json").read_text()
    )["resources"]
    coupon = stripe_client.v1.coupons.create(params={"percent_off": 5, "duration": "forever"})
    customer = _customer(stripe_client)
    schedule = stripe_client.v1.subscription_schedules.create(
        params={
            "customer": customer,
            "default_settings": {
                "collection_method": "send_invoice",
                "invoice_settings": {"days_until_due": 30},
            },
            "phases": [
                {
                    "items": [{"price": stripe_catalog["pro_monthly"], "quantity": 1}],
                    "discounts": [{"coupon": coupon.id}],
                }
            ],
        }
    )
    sub = stripe_client.v1.subscriptions.retrieve(str(schedule.subscription))
    item = sub["items"].data[0]
    stripe_emulator.advance_clock(DAY)
    stripe_client.v1.subscriptions.update(
        sub.id, params={"items": [{"id": item.id, "quantity": 2}]}
    )
    stripe_client.v1.payment_records.report_payment(
        params={
            "amount_requested": {"currency": "usd", "value": 100},
            "initiated_at": 1_700_000_000,
            "outcome": "guaranteed",
            "payment_method_details": {"type": "custom"},
        }
    )
    for kind in ("coupon", "discount", "subscription_schedule", "payment_record", "invoiceitem"):
        objects = stripe_emulator.objects(kind)
        assert objects, kind
        for obj in objects:
            assert set(obj) == set(fixtures[kind]), kind
    (phase,) = stripe_emulator.objects("subscription_schedule")[0]["phases"]
    assert set(phase) == set(fixtures["subscription_schedule"]["phases"][0])
    assert set(phase["items"][0]) == set(fixtures["subscription_schedule"]["phases"][0]["items"][0])


def test_schedule_previews_bill_the_phase_that_will_run_and_create_nothing(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    customer = _customer(stripe_client)
    phases: list[dict[str, Any]] = [
        {
            "items": [{"price": stripe_catalog["pro_monthly"], "quantity": 2}],
            "duration": {"interval": "month", "interval_count": 1},
        },
        {
            "items": [{"price": stripe_catalog["starter_monthly"], "quantity": 1}],
            "duration": {"interval": "month", "interval_count": 1},
        },
    ]
    settings = {"collection_method": "send_invoice", "invoice_settings": {"days_until_due": 30}}
    before = {kind: stripe_emulator.objects(kind) for kind in
              ("subscription", "subscription_schedule", "invoice", "event")}  # fmt: skip
    new = stripe_client.v1.invoices.create_preview(
        params={"customer": customer, "schedule_details": {"phases": phases}}
    )
    assert new.amount_due == 2 * 9_900
    assert {kind: stripe_emulator.objects(kind) for kind in before} == before

    schedule = stripe_client.v1.subscription_schedules.create(
        params={
            "customer": customer,
            "default_settings": settings,
            "phases": phases,
            "start_date": stripe_emulator.clock() + DAY,
        }
    )
    first = stripe_client.v1.invoices.create_preview(params={"schedule": schedule.id})
    assert first.amount_due == 2 * 9_900
    assert stripe_client.v1.subscription_schedules.retrieve(schedule.id).status == "not_started"

    stripe_emulator.advance_clock(DAY + 1)
    sub_id = str(stripe_client.v1.subscription_schedules.retrieve(schedule.id).subscription)
    renewal = stripe_client.v1.invoices.create_preview(params={"subscription": sub_id})
    assert renewal.amount_due == 2_900  # the second phase's price
    sub = stripe_client.v1.subscriptions.retrieve(sub_id)
    assert sub["items"].data[0].price.id == stripe_catalog["pro_monthly"]  # unchanged


def test_phase_item_metadata_reaches_the_subscription_items_when_the_phase_is_entered(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    """Stripe: metadata on a phase's configuration item "will update the underlying
    subscription item's metadata when the phase is entered"."""
    customer = _customer(stripe_client)
    product = stripe_client.v1.prices.retrieve(stripe_catalog["pro_monthly"]).product
    schedule = stripe_client.v1.subscription_schedules.create(
        params={
            "customer": customer,
            "default_settings": {
                "collection_method": "send_invoice",
                "invoice_settings": {"days_until_due": 30},
            },
            "phases": [
                {
                    "items": [
                        {
                            "price_data": {
                                "product": str(product),
                                "unit_amount": 4000,
                                "currency": "usd",
                                "recurring": {"interval": "month"},
                            },
                            "quantity": 10,
                            "metadata": {"sf_line": "pro_monthly"},
                        }
                    ],
                    "duration": {"interval": "month", "interval_count": 1},
                },
                {
                    "items": [
                        {
                            "price": stripe_catalog["pro_monthly"],
                            "quantity": 12,
                            "metadata": {"sf_line": "pro_monthly", "phase": "2"},
                        }
                    ],
                },
            ],
        }
    )
    sub = stripe_client.v1.subscriptions.retrieve(str(schedule.subscription))
    assert sub["items"].data[0].metadata.to_dict() == {"sf_line": "pro_monthly"}
    stripe_emulator.advance_clock(32 * DAY)
    sub = stripe_client.v1.subscriptions.retrieve(sub.id)
    assert [(i.quantity, i.metadata.to_dict()) for i in sub["items"].data] == [
        (12, {"sf_line": "pro_monthly", "phase": "2"})
    ]


def test_an_update_keeps_the_inline_prices_the_schedule_holds_and_needs_the_first_start(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, stripe_catalog: Any
) -> None:
    """Posting the current phase back as Stripe returned it (its prices by id, inline ones
    included) is accepted; a price the schedule does not hold must be active. Stripe: the
    first phase's `start_date` "Must be set on the first phase"."""
    customer = _customer(stripe_client)
    product = stripe_client.v1.prices.retrieve(stripe_catalog["pro_monthly"]).product
    sub = stripe_client.v1.subscriptions.create(
        params={
            "customer": customer,
            "items": [
                {
                    "price_data": {
                        "product": str(product),
                        "unit_amount": 4000,
                        "currency": "usd",
                        "recurring": {"interval": "month"},
                    },
                    "quantity": 10,
                }
            ],
            "collection_method": "send_invoice",
            "days_until_due": 30,
        }
    )
    schedule = stripe_client.v1.subscription_schedules.create(params={"from_subscription": sub.id})
    current = schedule.phases[0]
    inline = str(current["items"][0].price)
    phase = {
        "end_date": current.end_date,
        "items": [{"price": inline, "quantity": 10}],
    }
    with pytest.raises(stripe.InvalidRequestError, match="start_date"):
        stripe_client.v1.subscription_schedules.update(schedule.id, params={"phases": [phase]})
    updated = stripe_client.v1.subscription_schedules.update(
        schedule.id,
        params={
            "phases": [
                {**phase, "start_date": current.start_date},
                {"items": [{"price": stripe_catalog["pro_monthly"], "quantity": 12}]},
            ],
            "proration_behavior": "none",
        },
    )
    assert [p["items"][0].price for p in updated.phases] == [inline, stripe_catalog["pro_monthly"]]
    other = stripe_client.v1.subscriptions.create(
        params={
            "customer": customer,
            "items": [
                {
                    "price_data": {
                        "product": str(product),
                        "unit_amount": 100,
                        "currency": "usd",
                        "recurring": {"interval": "month"},
                    }
                }
            ],
            "collection_method": "send_invoice",
            "days_until_due": 30,
        }
    )
    foreign = other["items"].data[0].price.id
    with pytest.raises(stripe.InvalidRequestError, match="inactive"):
        stripe_client.v1.subscription_schedules.update(
            schedule.id,
            params={
                "phases": [
                    {**phase, "start_date": current.start_date},
                    {"items": [{"price": foreign, "quantity": 1}]},
                ]
            },
        )


@pytest.mark.parametrize(("behavior", "invoices"), [("none", 1), ("always_invoice", 2)])
def test_an_update_of_the_current_phase_changes_the_subscription_now_prorated_as_asked(
    stripe_emulator: StripeEmulator,
    stripe_client: stripe.StripeClient,
    stripe_catalog: Any,
    behavior: str,
    invoices: int,
) -> None:
    """Stripe's `proration_behavior` of a schedule update: "If the update changes the billing
    configuration (item price, quantity, etc.) of the current phase, indicates how prorations
    from this change should be handled": the subscription takes the current phase's items at
    once."""
    customer = _customer(stripe_client)
    sub = stripe_client.v1.subscriptions.create(
        params={
            "customer": customer,
            "items": [{"price": stripe_catalog["pro_monthly"], "quantity": 3}],
            "collection_method": "send_invoice",
            "days_until_due": 30,
        }
    )
    item_id = sub["items"].data[0].id
    schedule = stripe_client.v1.subscription_schedules.create(params={"from_subscription": sub.id})
    current = schedule.phases[0]
    stripe_emulator.advance_clock(10 * DAY)
    stripe_client.v1.subscription_schedules.update(
        schedule.id,
        params={
            "phases": [
                {
                    "start_date": current.start_date,
                    "end_date": current.end_date,
                    "items": [
                        {"price": stripe_catalog["pro_monthly"], "quantity": 5},
                        {"price": stripe_catalog["starter_monthly"], "quantity": 1},
                    ],
                },
                {"items": [{"price": stripe_catalog["pro_monthly"], "quantity": 5}]},
            ],
            "proration_behavior": behavior,  # type: ignore[typeddict-item]
        },
    )
    after = stripe_client.v1.subscriptions.retrieve(sub.id)
    held = {i.price.id: (i.id, i.quantity) for i in after["items"].data}
    assert held[stripe_catalog["pro_monthly"]] == (item_id, 5)  # the same item, raised
    assert held[stripe_catalog["starter_monthly"]][1] == 1
    assert len(stripe_emulator.objects("invoice")) == invoices

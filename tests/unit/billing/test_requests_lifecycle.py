"""Request bodies for changing a live subscription, built from the port's specs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sf_bridge.billing.port import (
    CouponSpec,
    ItemChange,
    PhaseSpec,
    PreviewSpec,
    PriceData,
    ScheduleSpec,
    SubscriptionItemSpec,
    SubscriptionUpdate,
)
from sf_bridge.billing.requests import (
    coupon_params,
    deal_coupon_id,
    preview_params,
    schedule_params,
    update_params,
)

AT = datetime(2026, 6, 1, tzinfo=UTC)


def test_update_body_names_each_item_change() -> None:
    body = update_params(
        SubscriptionUpdate(
            items=[
                ItemChange(item_id="si_1", quantity=5),
                ItemChange(item_id="si_2", deleted=True),
                ItemChange(price_data=PriceData("prod_1", 1_000, "usd", "month"), quantity=2),
            ],
            proration_behavior="always_invoice",
            proration_date=AT,
            coupons=[],
        )
    )
    assert body["items"] == [
        {"id": "si_1", "quantity": 5},
        {"id": "si_2", "deleted": True},
        {
            "price_data": {"product": "prod_1", "unit_amount": 1_000, "currency": "usd",
                           "recurring": {"interval": "month", "interval_count": 1}},
            "quantity": 2,
        },
    ]  # fmt: skip
    assert body["proration_behavior"] == "always_invoice"
    assert body["proration_date"] == int(AT.timestamp())
    assert body["discounts"] == ""  # no coupons: clears the discounts
    assert "metadata" not in body
    with pytest.raises(ValueError, match="needs a price"):
        update_params(SubscriptionUpdate(items=[ItemChange(quantity=1)]))


def test_coupon_ids_are_the_deals_own() -> None:
    assert deal_coupon_id("006Hs00001AcmeYQIA", "year 1") == "sfb-006Hs00001AcmeYQIA-year-1"
    long_a = deal_coupon_id("006Hs00001AcmeYQIA", "x" * 80 + "a")
    long_b = deal_coupon_id("006Hs00001AcmeYQIA", "x" * 80 + "b")
    assert len(long_a) == len(long_b) == 64
    assert long_a != long_b
    assert coupon_params(CouponSpec(id="c", duration="repeating", percent_off=10,
                                    duration_in_months=3)) == {
        "id": "c", "duration": "repeating", "percent_off": 10, "duration_in_months": 3
    }  # fmt: skip
    with pytest.raises(ValueError, match="percent_off or amount_off"):
        coupon_params(CouponSpec(id="c", duration="once"))


def test_schedule_and_preview_bodies() -> None:
    item = SubscriptionItemSpec(quantity=3, price="price_1")
    body = schedule_params(
        ScheduleSpec(
            customer="cus_1",
            phases=[
                PhaseSpec(items=[item], months=12, coupons=["sfb-006-y1"]),
                PhaseSpec(items=[item], end_date=AT),
            ],
            metadata={"sf_opportunity_id": "006"},
            start_date=AT,
            end_behavior="cancel",
        )
    )
    assert body["start_date"] == int(AT.timestamp())
    assert body["default_settings"] == {
        "collection_method": "send_invoice",
        "invoice_settings": {"days_until_due": 30},
    }
    assert body["phases"][0]["duration"] == {"interval": "month", "interval_count": 12}
    assert body["phases"][0]["discounts"] == [{"coupon": "sfb-006-y1"}]
    assert body["phases"][1]["end_date"] == int(AT.timestamp())
    assert preview_params(PreviewSpec(subscription="sub_1")) == {
        "subscription": "sub_1",
        "subscription_details": {"proration_behavior": "create_prorations"},
    }
    with pytest.raises(ValueError, match="subscription or of a customer"):
        preview_params(PreviewSpec())

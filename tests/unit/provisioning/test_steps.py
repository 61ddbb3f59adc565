from __future__ import annotations

from dataclasses import replace

import pytest

from sf_bridge.billing.memory import InMemoryBilling
from sf_bridge.billing.requests import subscription_params
from sf_bridge.errors import BillingRejected
from sf_bridge.provisioning.outcome import DealView
from sf_bridge.provisioning.prices import PriceCache
from sf_bridge.provisioning.states import next_step, status_before
from sf_bridge.provisioning.steps import StepContext, build_subscription, idempotency_key
from tests.fixtures.provisioning import make_plan


def _ctx(billing: InMemoryBilling) -> StepContext:
    return StepContext(billing=billing, mappings_loader=lambda: None, prices=PriceCache())


def _deal(plan_opp: str = "006000000000001AAA") -> DealView:
    return DealView(
        id=1,
        opportunity_id=plan_opp,
        status="customer_ready",
        current_step="subscription",
        attempts=0,
        source="stream",
        stripe_customer_id="cus_1",
    )


def test_idempotency_key_is_deterministic_and_content_bound() -> None:
    a = idempotency_key("006A", "subscription", {"items": [1, 2], "customer": "cus_1"})
    b = idempotency_key("006A", "subscription", {"customer": "cus_1", "items": [1, 2]})
    assert a == b
    assert a.startswith("sfb-subscription-")
    assert a != idempotency_key("006A", "subscription", {"items": [1, 3], "customer": "cus_1"})
    assert a != idempotency_key("006B", "subscription", {"items": [1, 2], "customer": "cus_1"})
    assert len(a) <= 255


def test_catalog_price_is_used_when_the_amount_matches() -> None:
    billing = InMemoryBilling()
    price = billing.add_price("pro_monthly", 5000)
    plan = make_plan("006000000000001AAA", unit_amount=5000)
    spec = build_subscription(_ctx(billing), _deal(), plan)
    assert spec.items[0].price == price.id
    assert spec.items[0].price_data is None
    assert spec.items[0].quantity == 3
    assert spec.collection_method == "send_invoice"
    assert spec.days_until_due == 30
    assert spec.payment_behavior is None
    assert spec.metadata == {
        "sf_opportunity_id": "006000000000001AAA",
        "sf_account_id": "001000000000001AAA",
        "mapping_version": "v1",
    }


def test_negotiated_price_goes_in_as_price_data_on_the_catalog_product() -> None:
    billing = InMemoryBilling()
    price = billing.add_price("pro_monthly", 5000)
    plan = make_plan("006000000000001AAA", unit_amount=4200)
    spec = build_subscription(_ctx(billing), _deal(), plan)
    item = spec.items[0]
    assert item.price is None
    assert item.price_data is not None
    assert item.price_data.product == price.product
    assert item.price_data.unit_amount == 4200
    assert (item.price_data.currency, item.price_data.interval) == ("usd", "month")


def test_charge_automatically_leaves_the_first_invoice_open() -> None:
    billing = InMemoryBilling()
    billing.add_price("pro_monthly", 5000)
    plan = make_plan("006000000000001AAA", collection_method="charge_automatically")
    spec = build_subscription(_ctx(billing), _deal(), plan)
    assert spec.payment_behavior == "default_incomplete"
    assert spec.days_until_due is None


def test_due_on_receipt_is_sent_as_zero_days_until_due() -> None:
    billing = InMemoryBilling()
    billing.add_price("pro_monthly", 5000)
    plan = make_plan("006000000000001AAA")
    assert plan.billing is not None
    plan = replace(plan, billing=replace(plan.billing, days_until_due=0))
    spec = build_subscription(_ctx(billing), _deal(), plan)
    assert spec.days_until_due == 0
    assert subscription_params(spec)["days_until_due"] == 0


def test_missing_and_archived_prices_are_refused_with_a_fix() -> None:
    billing = InMemoryBilling()
    with pytest.raises(BillingRejected, match="No Stripe price has the lookup key 'pro_monthly'"):
        build_subscription(_ctx(billing), _deal(), make_plan("006000000000001AAA"))
    billing.add_price("pro_monthly", 5000, active=False)
    with pytest.raises(BillingRejected, match=r"archived \(inactive\)") as info:
        build_subscription(_ctx(billing), _deal(), make_plan("006000000000001AAA"))
    assert "replay" in info.value.user_message()


def test_price_cache_keeps_active_prices_only() -> None:
    billing = InMemoryBilling()
    billing.add_price("pro_monthly", 5000)
    billing.add_price("old_monthly", 5000, active=False)
    cache = PriceCache()
    cache.resolve(billing, ["pro_monthly", "old_monthly"])
    cache.resolve(billing, ["pro_monthly"])
    assert billing.calls["find_prices"] == 1
    billing.set_price_active("old_monthly", True)
    assert cache.resolve(billing, ["old_monthly"])["old_monthly"].active
    assert billing.calls["find_prices"] == 2
    cache.forget(["pro_monthly"])
    cache.resolve(billing, ["pro_monthly"])
    assert billing.calls["find_prices"] == 3


def test_custom_plans_skip_subscription_and_invoice() -> None:
    assert next_step("customer", custom_plan=True) == "entitlements"
    assert next_step("customer", custom_plan=False) == "subscription"
    assert next_step("write_back", custom_plan=False) is None
    assert status_before("entitlements", custom_plan=True) == "customer_ready"
    assert status_before("entitlements", custom_plan=False) == "invoice_open"


def test_plan_round_trips_through_the_deal() -> None:
    plan = make_plan("006000000000001AAA", unit_amount=4200)
    assert replace(plan) == type(plan).from_dict(plan.to_dict())

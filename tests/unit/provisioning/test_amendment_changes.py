"""The item changes an amendment, renewal or reopened deal asks of a live subscription."""

from __future__ import annotations

from dataclasses import replace

from sf_bridge.billing.port import (
    BillingSubscription,
    BillingSubscriptionItem,
    ItemChange,
    PriceData,
)
from sf_bridge.plan import PlanItem
from sf_bridge.provisioning import amendment
from sf_bridge.provisioning.amendment import Target
from tests.fixtures.provisioning import make_plan

LIVE = BillingSubscription(
    id="sub_1",
    customer="cus_1",
    status="active",
    latest_invoice="in_1",
    collection_method="send_invoice",
    metadata={},
    items=(
        BillingSubscriptionItem("si_plan", "price_pro", 5, 5000, "usd", "month", "pro_monthly"),
        BillingSubscriptionItem("si_addon", "price_sandbox", 2, 700, "usd", "month", "sandbox"),
    ),
)


def _target(key: str, quantity: int, kind: str = "plan", amount: int | None = None) -> Target:
    item = PlanItem(kind, key, key, quantity, "usd", "month", key, 5000, amount)  # type: ignore[arg-type]
    data = PriceData("prod_1", amount, "usd", "month") if amount else None
    price = None if data else f"price_{key}"
    return Target(item, price, ItemChange(quantity=quantity, price=price, price_data=data))


def _pro(quantity: int, amount: int | None = None) -> Target:
    t = _target("pro_monthly", quantity, amount=amount)
    return t if amount else replace(t, price="price_pro")


def _plan(intent: str = "amendment", lines: str = "additions") -> object:
    return replace(make_plan("006000000000001AAA"), intent=intent, amendment_lines=lines)


def test_additions_add_to_the_item_of_the_same_price_and_add_new_items() -> None:
    changes = amendment.item_changes(
        _plan(),
        [_pro(20), _target("analytics", 1, "addon")],
        LIVE,  # type: ignore[arg-type]
    )
    assert changes == [
        ItemChange(item_id="si_plan", quantity=25),
        ItemChange(quantity=1, price="price_analytics"),
    ]


def test_totals_set_quantities_and_remove_items_no_longer_listed() -> None:
    changes = amendment.item_changes(_plan(lines="totals"), [_pro(4)], LIVE)  # type: ignore[arg-type]
    assert changes == [
        ItemChange(item_id="si_plan", quantity=4),
        ItemChange(item_id="si_addon", deleted=True),
    ]


def test_totals_already_met_ask_for_nothing() -> None:
    changes = amendment.item_changes(
        _plan(lines="totals"),  # type: ignore[arg-type]
        [_pro(5), _target("sandbox", 2, "addon")],
        LIVE,
    )
    assert changes == []


def test_another_plan_swaps_the_price_of_the_plan_item() -> None:
    changes = amendment.item_changes(
        _plan(),  # type: ignore[arg-type]
        [_target("ent_monthly", 5)],
        LIVE,
        live_plan_keys=["pro_monthly"],
    )
    assert changes == [ItemChange(item_id="si_plan", quantity=5, price="price_ent_monthly")]


def test_a_renewal_at_a_negotiated_higher_price_swaps_the_price() -> None:
    plan = replace(make_plan("006000000000001AAA"), intent="renewal")
    changes = amendment.item_changes(plan, [_pro(5, amount=6000)], LIVE)
    assert changes[0].item_id == "si_plan"
    assert changes[0].price_data is not None
    assert changes[0].price_data.unit_amount == 6000
    assert changes[1] == ItemChange(item_id="si_addon", deleted=True)
    assert amendment.proration(plan) == "none"


def test_a_reopened_deal_applies_the_difference_from_what_it_provisioned() -> None:
    changes = amendment.item_changes(
        _plan(lines="totals"),  # type: ignore[arg-type]
        [_pro(40)],
        replace(LIVE, items=(replace(LIVE.items[0], quantity=25),)),  # 5 of it + 20 of another
        from_items=[{"lookup_key": "pro_monthly", "quantity": 5}],
    )
    assert changes == [ItemChange(item_id="si_plan", quantity=60)]


def test_markers_keep_the_latest_within_stripes_500_characters() -> None:
    sub = replace(LIVE, metadata={"sf_amendments": ",".join(f"x{n:030d}" for n in range(16))})
    value = amendment.with_marker(sub, "006000000000001AAA:abcdef0123")
    assert len(value) <= 500
    assert value.endswith("006000000000001AAA:abcdef0123")
    assert amendment.applied(replace(sub, metadata={"sf_amendments": value}), value[-29:])

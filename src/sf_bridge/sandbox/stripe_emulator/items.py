"""Subscription items: the price each item bills (a catalog price or an inline `price_data`
price), its quantity, and the rule that one subscription's items share currency and interval."""

from __future__ import annotations

from typing import Any

from .catalog import Params, price_object
from .errors import StripeApiError
from .objects import build, clone, new_id
from .store import Store, merge_metadata

# "A list of up to 20 subscription items" (the `items` of subscription create and update).
MAX_ITEMS = 20


def check_item_count(count: int) -> None:
    """Stripe refuses a subscription (or an `items` list) of more than 20 items."""
    if count > MAX_ITEMS:
        raise StripeApiError.invalid_request(
            f"A subscription can have up to {MAX_ITEMS} items, but you've set {count}.",
            param="items",
        )


def plan_from_price(price: dict[str, Any]) -> dict[str, Any]:
    recurring = price["recurring"] or {}
    return build(
        "plan",
        id=price["id"],
        active=price["active"],
        amount=price["unit_amount"],
        amount_decimal=price["unit_amount_decimal"],
        created=price["created"],
        currency=price["currency"],
        interval=recurring.get("interval", "month"),
        interval_count=recurring.get("interval_count", 1),
        metadata=price["metadata"],
        nickname=price["nickname"],
        product=price["product"],
    )


def resolve_item_price(
    store: Store, item: Params, index: int, param: str = "items"
) -> dict[str, Any]:
    prefix = f"{param}[{index}]"
    if item.get("price") and item.get("price_data"):
        raise StripeApiError.invalid_request(
            f"You may only specify one of these parameters: {prefix}[price], {prefix}[price_data].",
            param=f"{prefix}[price]",
        )
    if item.get("price") or item.get("plan"):
        field = "price" if item.get("price") else "plan"
        price = store.get("price", item[field], param=f"{prefix}[{field}]")
        if not price["active"]:
            raise StripeApiError.invalid_request(
                "The price specified is inactive. This field only accepts active prices.",
                param=f"{prefix}[{field}]",
            )
        if price["type"] != "recurring":
            raise StripeApiError.invalid_request(
                "The price specified is set to `type=one_time` but this field only accepts "
                "prices with `type=recurring`.",
                param=f"{prefix}[{field}]",
            )
        product = store.objects["product"].get(price["product"])
        if product is not None and not product["active"]:
            raise StripeApiError.invalid_request(
                "The product of the price specified is inactive. This field only accepts "
                "prices of active products.",
                param=f"{prefix}[{field}]",
            )
        return price
    data = item.get("price_data")
    if not data:
        raise StripeApiError.invalid_request(
            f"Missing required param: {prefix}[price].",
            param=f"{prefix}[price]",
            code="parameter_missing",
        )
    product = store.get("product", data["product"], param=f"{prefix}[price_data][product]")
    if not product["active"]:
        raise StripeApiError.invalid_request(
            "The product specified is inactive. This field only accepts active products.",
            param=f"{prefix}[price_data][product]",
        )
    if "unit_amount" in data:
        amount = int(data["unit_amount"])
    elif "unit_amount_decimal" in data:
        amount = round(float(data["unit_amount_decimal"]))
    else:
        raise StripeApiError.invalid_request(
            f"Missing required param: {prefix}[price_data][unit_amount].",
            param=f"{prefix}[price_data][unit_amount]",
            code="parameter_missing",
        )
    if amount < 0:
        raise StripeApiError.invalid_request(
            "This value must be greater than or equal to 0.",
            param=f"{prefix}[price_data][unit_amount]",
            code="parameter_invalid_integer",
        )
    # Inline prices exist only for this subscription: archived from the start, as in Stripe.
    price = price_object(
        store,
        product=product["id"],
        currency=data["currency"],
        unit_amount=amount,
        recurring=data["recurring"],
        active=False,
        param=f"{prefix}[price_data]",
    )
    return price  # stored by `keep_inline_prices` once the whole request is accepted


def keep_inline_prices(store: Store, prices: list[dict[str, Any]]) -> None:
    """Stores the `price_data` prices of an accepted request (a refused one leaves none)."""
    for price in prices:
        store.objects["price"].setdefault(price["id"], price)


def quantity_of(item: Params, prefix: str) -> int:
    quantity = int(item.get("quantity", 1))
    if quantity < 0:
        raise StripeApiError.invalid_request(
            "This value must be greater than or equal to 0.",
            param=f"{prefix}[quantity]",
            code="parameter_invalid_integer",
        )
    return quantity


def item_object(
    store: Store, sub_id: str, price: dict[str, Any], quantity: int, item: Params, period: tuple
) -> dict[str, Any]:
    item_id = new_id("subscription_item")
    store.items[item_id] = sub_id
    return build(
        "subscription_item",
        id=item_id,
        created=store.now(),
        price=clone(price),
        plan=plan_from_price(price),
        quantity=quantity,
        subscription=sub_id,
        metadata=merge_metadata({}, item.get("metadata", {})),
        current_period_start=period[0],
        current_period_end=period[1],
    )


def check_compatible(prices: list[dict[str, Any]]) -> None:
    first = prices[0]
    for price in prices[1:]:
        if price["currency"] != first["currency"]:
            raise StripeApiError.invalid_request(
                "Currency and interval fields must match across all plans on this "
                "subscription. Found mismatch in currency field.",
                param="items",
            )
        if (price["recurring"]["interval"], price["recurring"]["interval_count"]) != (
            first["recurring"]["interval"],
            first["recurring"]["interval_count"],
        ):
            raise StripeApiError.invalid_request(
                "Currency and interval fields must match across all plans on this "
                "subscription. Found mismatch in interval field.",
                param="items",
            )

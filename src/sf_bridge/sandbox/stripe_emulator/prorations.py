"""Prorations when a subscription's items change mid-period, as Stripe documents them: for
each changed item, a credit for the unused time on what it billed and a charge for the
remaining time on what it bills now, both for the fraction of the period left:

    credit = -round(old unit amount x old quantity x (period end - t) / (period end - start))
    charge =  round(new unit amount x new quantity x (period end - t) / (period end - start))

`t` is the change's `proration_date` (default: the emulator's clock). The lines become
invoice items marked `proration`: pending for the next invoice (`create_prorations`, the
default), invoiced at once (`always_invoice`), or not made at all (`none`)."""

from __future__ import annotations

from typing import Any

from .errors import StripeApiError
from .objects import build, new_id
from .store import Store

BEHAVIORS = ("create_prorations", "always_invoice", "none")


def check_behavior(params: dict[str, Any]) -> str:
    behavior = params.get("proration_behavior", "create_prorations")
    if behavior not in BEHAVIORS:
        raise StripeApiError.invalid_request(
            "Invalid proration_behavior: must be one of always_invoice, create_prorations, or none",
            param="proration_behavior",
        )
    return str(behavior)


def proration_date(store: Store, params: dict[str, Any], period: tuple[int, int]) -> int:
    at = int(params.get("proration_date") or store.now())
    if not period[0] <= at <= period[1]:
        raise StripeApiError.invalid_request(
            "proration_date must be within the subscription's current period.",
            param="proration_date",
        )
    return at


def _amount(item: dict[str, Any]) -> int:
    return int(item["price"]["unit_amount"]) * int(item["quantity"])


def _name(store: Store, item: dict[str, Any]) -> str:
    product = store.objects["product"].get(item["price"]["product"])
    return product["name"] if product else item["price"]["product"]


def prorate(
    store: Store,
    sub: dict[str, Any],
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    at: int,
    period: tuple[int, int],
) -> list[dict[str, Any]]:
    """The pending proration invoice items for changing `before` into `after` at `at`."""
    start, end = period
    if end <= start or at >= end:
        return []
    left = (end - at) / (end - start)
    old = {item["id"]: item for item in before}
    new = {item["id"]: item for item in after}
    made: list[dict[str, Any]] = []
    for item_id in list(old) + [i for i in new if i not in old]:
        was, now = old.get(item_id), new.get(item_id)
        same_price = was and now and was["price"]["id"] == now["price"]["id"]
        if same_price and was["quantity"] == now["quantity"]:  # type: ignore[index]
            continue
        if was is not None:
            made.append(
                _invoice_item(
                    store, sub, was, -round(_amount(was) * left), at, end, "Unused time on"
                )
            )
        if now is not None:
            made.append(
                _invoice_item(
                    store, sub, now, round(_amount(now) * left), at, end, "Remaining time on"
                )
            )
    return [item for item in made if item["amount"] != 0]


def _invoice_item(
    store: Store,
    sub: dict[str, Any],
    item: dict[str, Any],
    amount: int,
    at: int,
    end: int,
    what: str,
) -> dict[str, Any]:
    price = item["price"]
    invoice_item = build(
        "invoiceitem",
        id=new_id("invoiceitem"),
        amount=amount,
        net_amount=amount,
        currency=price["currency"],
        customer=sub["customer"],
        date=store.now(),
        description=f"{what} {item['quantity']} \u00d7 {_name(store, item)}",
        discountable=False,
        discounts=[],
        invoice=None,
        metadata={},
        period={"start": at, "end": end},
        proration=True,
        quantity=item["quantity"],
        quantity_decimal=str(item["quantity"]),
        parent={
            "subscription_details": {"subscription": sub["id"], "subscription_item": item["id"]},
            "type": "subscription_details",
        },
        pricing={
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
    )
    store.add(invoice_item)
    return invoice_item


def pending_for(store: Store, sub_id: str) -> list[dict[str, Any]]:
    """The subscription's invoice items not yet on an invoice, oldest first."""
    return [
        ii
        for ii in store.objects["invoiceitem"].values()
        if ii["invoice"] is None
        and (ii["parent"] or {}).get("subscription_details", {}).get("subscription") == sub_id
    ]

"""Coupons and the discounts that apply them: a coupon takes `percent_off`, or `amount_off`
with its `currency`, and lasts `once`, `repeating` (`duration_in_months`) or `forever`. A
discount on a subscription (or a schedule phase) applies the coupon to each invoice while it
lasts; the invoice shows it in `discounts` and `total_discount_amounts`, and each line in its
`discount_amounts`."""

from __future__ import annotations

import secrets
import string
from typing import Any

from .catalog import Params
from .clock import add_interval
from .errors import StripeApiError
from .objects import build, new_id
from .store import RequestContext, Store, merge_metadata

DURATIONS = ("once", "repeating", "forever")
COUPON_ID_ALPHABET = string.ascii_uppercase + string.digits


def create_coupon(store: Store, params: Params, ctx: RequestContext) -> dict[str, Any]:
    percent = params.get("percent_off")
    amount = params.get("amount_off")
    if (percent is None) == (amount is None):
        raise StripeApiError.invalid_request(
            "You must pass exactly one of percent_off or amount_off.", param="percent_off"
        )
    if percent is not None and not 0 < float(percent) <= 100:
        raise StripeApiError.invalid_request(
            "percent_off must be greater than 0 and at most 100.", param="percent_off"
        )
    if amount is not None and not params.get("currency"):
        raise StripeApiError.invalid_request(
            "You must pass currency when passing amount_off.", param="currency"
        )
    duration = params.get("duration", "once")
    if duration not in DURATIONS:
        raise StripeApiError.invalid_request(
            "Invalid duration: must be one of forever, once, or repeating", param="duration"
        )
    months = params.get("duration_in_months")
    if duration == "repeating" and months is None:
        raise StripeApiError.invalid_request(
            "Missing required param: duration_in_months.",
            param="duration_in_months",
            code="parameter_missing",
        )
    if duration != "repeating" and months is not None:
        raise StripeApiError.invalid_request(
            "duration_in_months can only be set when duration is repeating.",
            param="duration_in_months",
        )
    coupon_id = params.get("id") or "".join(secrets.choice(COUPON_ID_ALPHABET) for _ in range(8))
    if coupon_id in store.objects["coupon"]:
        raise StripeApiError.invalid_request(
            "Coupon already exists.", param="id", code="resource_already_exists"
        )
    coupon = build(
        "coupon",
        id=coupon_id,
        created=store.now(),
        percent_off=float(percent) if percent is not None else None,
        amount_off=int(amount) if amount is not None else None,
        currency=str(params["currency"]).lower() if params.get("currency") else None,
        duration=duration,
        duration_in_months=int(months) if months is not None else None,
        max_redemptions=params.get("max_redemptions"),
        metadata=merge_metadata({}, params.get("metadata", {})),
        name=params.get("name"),
        redeem_by=params.get("redeem_by"),
        times_redeemed=0,
        valid=True,
    )
    store.add(coupon)
    store.emit("coupon.created", coupon, ctx)
    return coupon


def attach(
    store: Store,
    entries: Any,
    *,
    customer: str,
    subscription: str | None,
    currency: str,
    param: str = "discounts",
) -> list[str]:
    """The discount ids for a `discounts` parameter (`[{coupon}|{discount}]`, or `''` for
    none): a new discount for each coupon, an existing discount kept as it is."""
    if entries == "" or entries is None:
        return []
    ids: list[str] = []
    for index, entry in enumerate(entries):
        where = f"{param}[{index}]"
        if entry.get("discount"):
            store.get("discount", entry["discount"], param=f"{where}[discount]")
            ids.append(entry["discount"])
            continue
        if not entry.get("coupon"):
            raise StripeApiError.invalid_request(
                f"Missing required param: {where}[coupon].",
                param=f"{where}[coupon]",
                code="parameter_missing",
            )
        coupon = store.get("coupon", entry["coupon"], param=f"{where}[coupon]")
        if coupon["amount_off"] is not None and coupon["currency"] != currency:
            raise StripeApiError.invalid_request(
                f"The coupon's currency ({coupon['currency']}) does not match the "
                f"subscription's currency ({currency}).",
                param=f"{where}[coupon]",
            )
        start = store.now()
        end = None
        if coupon["duration"] == "repeating":
            end = add_interval(start, "month", coupon["duration_in_months"])
        discount = build(
            "discount",
            id=new_id("discount"),
            customer=customer,
            subscription=subscription,
            start=start,
            end=end,
            source={"coupon": coupon["id"], "type": "coupon"},
            checkout_session=None,
            invoice=None,
            invoice_item=None,
            promotion_code=None,
            subscription_item=None,
        )
        coupon["times_redeemed"] += 1
        store.add(discount)
        ids.append(discount["id"])
    if len(set(ids)) != len(ids):
        raise StripeApiError.invalid_request(
            "The same discount or coupon cannot be applied more than once.", param=param
        )
    return ids


def active(store: Store, discount_ids: list[str], at: int) -> list[dict[str, Any]]:
    """The discounts of `discount_ids` that apply to an invoice made at `at`: a `once`
    coupon's discount applies to the first invoice only, a `repeating` one until its end."""
    found = []
    for discount_id in discount_ids:
        discount = store.objects["discount"].get(discount_id)
        if discount is None:
            continue
        coupon = store.objects["coupon"][discount["source"]["coupon"]]
        if discount["end"] is not None and at >= discount["end"]:
            continue
        if coupon["duration"] == "once" and discount_id in store.used_once:
            continue
        found.append(discount)
    return found


def apply(
    store: Store, invoice: dict[str, Any], discount_ids: list[str], *, consume: bool = True
) -> None:
    """Sets the invoice's totals: the subtotal less each applicable discount (in order, never
    below zero), spread over the discountable lines in proportion to their amounts."""
    lines = invoice["lines"]["data"]
    subtotal = sum(line["amount"] for line in lines)
    remaining = subtotal
    totals: list[dict[str, Any]] = []
    applied: list[str] = []
    for line in lines:
        line["discount_amounts"] = []
    for discount in active(store, discount_ids, invoice["created"]):
        coupon = store.objects["coupon"][discount["source"]["coupon"]]
        if coupon["percent_off"] is not None:
            amount = round(remaining * coupon["percent_off"] / 100)
        else:
            amount = min(coupon["amount_off"], remaining)
        amount = max(0, amount)
        remaining -= amount
        totals.append({"amount": amount, "discount": discount["id"]})
        applied.append(discount["id"])
        _spread(lines, discount["id"], amount)
        if consume and coupon["duration"] == "once":
            store.used_once.add(discount["id"])
    invoice["discounts"] = applied
    invoice["total_discount_amounts"] = totals
    invoice["subtotal"] = subtotal
    invoice["subtotal_excluding_tax"] = subtotal
    total = subtotal - sum(t["amount"] for t in totals)
    invoice["total"] = total
    invoice["total_excluding_tax"] = total
    invoice["amount_due"] = max(0, total)
    invoice["amount_remaining"] = max(0, total) - invoice["amount_paid"]


def _spread(lines: list[dict[str, Any]], discount_id: str, amount: int) -> None:
    positive = [line for line in lines if line["discountable"] and line["amount"] > 0]
    base = sum(line["amount"] for line in positive)
    left = amount
    for index, line in enumerate(positive):
        share = left if index == len(positive) - 1 else round(amount * line["amount"] / base)
        left -= share
        line["discount_amounts"].append({"amount": share, "discount": discount_id})

"""Stripe request bodies built from the billing port's specs, without the `stripe` SDK: the
gateway sends them, and the provisioning steps hash them into idempotency keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sf_bridge.billing.metadata import stripe_metadata
from sf_bridge.billing.port import (
    CouponSpec,
    ItemChange,
    PreviewSpec,
    PriceData,
    SubscriptionSpec,
    SubscriptionUpdate,
)


def _price_data(data: PriceData) -> dict[str, Any]:
    return {
        "product": data.product,
        "unit_amount": data.unit_amount,
        "currency": data.currency,
        "recurring": {"interval": data.interval, "interval_count": data.interval_count},
    }


def subscription_params(spec: SubscriptionSpec) -> dict[str, Any]:
    """The Stripe request body for a subscription (also the content its idempotency key hashes)."""
    items: list[dict[str, Any]] = []
    for item in spec.items:
        entry: dict[str, Any] = {"quantity": item.quantity}
        if item.price_data is not None:
            entry["price_data"] = _price_data(item.price_data)
        else:
            entry["price"] = item.price
        items.append(entry)
    params: dict[str, Any] = {
        "customer": spec.customer,
        "items": items,
        "metadata": stripe_metadata(spec.metadata),
        "collection_method": spec.collection_method,
    }
    if spec.collection_method == "send_invoice":
        params["days_until_due"] = spec.days_until_due if spec.days_until_due is not None else 30
    if spec.payment_behavior:
        params["payment_behavior"] = spec.payment_behavior
    return params


def item_change_params(changes: Sequence[ItemChange]) -> list[dict[str, Any]]:
    """`items[]` of a subscription update or an invoice preview."""
    items: list[dict[str, Any]] = []
    for change in changes:
        if change.price is not None and change.price_data is not None:
            raise ValueError("an item change takes a price or price_data, not both")
        if change.item_id is None and change.price is None and change.price_data is None:
            raise ValueError("a new subscription item needs a price or price_data")
        entry: dict[str, Any] = {}
        if change.item_id is not None:
            entry["id"] = change.item_id
        if change.deleted:
            entry["deleted"] = True
            items.append(entry)
            continue
        if change.price is not None:
            entry["price"] = change.price
        if change.price_data is not None:
            entry["price_data"] = _price_data(change.price_data)
        if change.quantity is not None:
            entry["quantity"] = change.quantity
        items.append(entry)
    return items


def update_params(spec: SubscriptionUpdate) -> dict[str, Any]:
    """The Stripe request body of a subscription update (also what its idempotency key hashes)."""
    params: dict[str, Any] = {"proration_behavior": spec.proration_behavior}
    if spec.items:
        params["items"] = item_change_params(spec.items)
    if spec.proration_date is not None:
        params["proration_date"] = int(spec.proration_date.timestamp())
    if spec.coupons is not None:
        params["discounts"] = [{"coupon": coupon} for coupon in spec.coupons] or ""
    if spec.metadata is not None:
        params["metadata"] = stripe_metadata(spec.metadata)
    return params


def coupon_params(spec: CouponSpec) -> dict[str, Any]:
    if (spec.percent_off is None) == (spec.amount_off is None):
        raise ValueError("a coupon takes percent_off or amount_off (with a currency)")
    params: dict[str, Any] = {"id": spec.id, "duration": spec.duration}
    if spec.percent_off is not None:
        params["percent_off"] = spec.percent_off
    else:
        params["amount_off"] = spec.amount_off
        params["currency"] = spec.currency
    if spec.duration == "repeating":
        params["duration_in_months"] = spec.duration_in_months
    if spec.name:
        params["name"] = spec.name
    if spec.metadata:
        params["metadata"] = stripe_metadata(spec.metadata)
    return params


def preview_params(spec: PreviewSpec) -> dict[str, Any]:
    if (spec.subscription is None) == (spec.customer is None):
        raise ValueError("a preview is of a subscription or of a customer's new one")
    params: dict[str, Any] = {}
    details: dict[str, Any] = {}
    if spec.subscription is not None:
        params["subscription"] = spec.subscription
        details["proration_behavior"] = spec.proration_behavior
        if spec.proration_date is not None:
            details["proration_date"] = int(spec.proration_date.timestamp())
    else:
        params["customer"] = spec.customer
    if spec.items:
        details["items"] = item_change_params(spec.items)
    if details:
        params["subscription_details"] = details
    return params

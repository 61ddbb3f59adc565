"""Stripe request bodies built from the billing port's specs, without the `stripe` SDK: the
gateway sends them, and the provisioning steps hash them into idempotency keys."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from sf_bridge.billing.metadata import stripe_metadata
from sf_bridge.billing.port import (
    CouponSpec,
    ItemChange,
    PhaseSpec,
    PreviewSpec,
    PriceData,
    ScheduleSpec,
    SubscriptionItemSpec,
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
    items = [_item(item) for item in spec.items]
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
    if spec.coupons:
        params["discounts"] = [{"coupon": coupon} for coupon in spec.coupons]
    if spec.backdate_start_date is not None:
        params["backdate_start_date"] = int(spec.backdate_start_date.timestamp())
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
        if change.metadata:
            entry["metadata"] = stripe_metadata(change.metadata)
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


COUPON_ID_MAX = 64
COUPON_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def deal_coupon_id(opportunity_id: str, label: str) -> str:
    """The coupon id for one discount of one deal (`sfb-<opportunity>-<label>`): the same
    deal and label always name the same coupon, so a retried step finds it instead of making
    a second one. Characters other than letters, digits, `-` and `_` become `-`; a long label
    is cut and ends with a digest so two labels never share an id."""
    text = COUPON_ID_UNSAFE.sub("-", f"sfb-{opportunity_id}-{label}").strip("-")
    if len(text) <= COUPON_ID_MAX:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{text[: COUPON_ID_MAX - 13]}-{digest}"


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
    given = [v for v in (spec.subscription, spec.customer, spec.schedule) if v is not None]
    if len(given) != 1:
        raise ValueError("a preview is of a subscription, a schedule or of a customer's new one")
    if spec.schedule is not None:
        return {"schedule": spec.schedule}
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


def _item(item: SubscriptionItemSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"quantity": item.quantity}
    if item.price_data is not None:
        entry["price_data"] = _price_data(item.price_data)
    else:
        entry["price"] = item.price
    if item.metadata:
        entry["metadata"] = stripe_metadata(item.metadata)
    return entry


def phase_params(phase: PhaseSpec) -> dict[str, Any]:
    params: dict[str, Any] = {"items": [_item(item) for item in phase.items]}
    if phase.end_date is not None and phase.months is not None:
        raise ValueError("a phase lasts until an end date or for some months, not both")
    if phase.end_date is not None:
        params["end_date"] = int(phase.end_date.timestamp())
    if phase.months is not None:
        params["duration"] = {"interval": "month", "interval_count": phase.months}
    if phase.coupons:
        params["discounts"] = [{"coupon": coupon} for coupon in phase.coupons]
    if phase.metadata:
        params["metadata"] = stripe_metadata(phase.metadata)
    if phase.collection_method is not None:
        params["collection_method"] = phase.collection_method
    if phase.days_until_due is not None:
        params["invoice_settings"] = {"days_until_due": phase.days_until_due}
    return params


def schedule_params(spec: ScheduleSpec) -> dict[str, Any]:
    """The Stripe request body of a schedule (also what its idempotency key hashes)."""
    settings: dict[str, Any] = {"collection_method": spec.collection_method}
    if spec.collection_method == "send_invoice":
        days = spec.days_until_due if spec.days_until_due is not None else 30
        settings["invoice_settings"] = {"days_until_due": days}
    return {
        "customer": spec.customer,
        "start_date": "now" if spec.start_date is None else int(spec.start_date.timestamp()),
        "end_behavior": spec.end_behavior,
        "default_settings": settings,
        "metadata": stripe_metadata(spec.metadata),
        "phases": [phase_params(phase) for phase in spec.phases],
    }

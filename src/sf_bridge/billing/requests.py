"""Stripe request bodies built from the billing port's specs, without the `stripe` SDK: the
gateway sends them, and the provisioning steps hash them into idempotency keys."""

from __future__ import annotations

from typing import Any

from sf_bridge.billing.metadata import stripe_metadata
from sf_bridge.billing.port import SubscriptionSpec


def subscription_params(spec: SubscriptionSpec) -> dict[str, Any]:
    """The Stripe request body for a subscription (also the content its idempotency key hashes)."""
    items: list[dict[str, Any]] = []
    for item in spec.items:
        entry: dict[str, Any] = {"quantity": item.quantity}
        if item.price_data is not None:
            entry["price_data"] = {
                "product": item.price_data.product,
                "unit_amount": item.price_data.unit_amount,
                "currency": item.price_data.currency,
                "recurring": {
                    "interval": item.price_data.interval,
                    "interval_count": item.price_data.interval_count,
                },
            }
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

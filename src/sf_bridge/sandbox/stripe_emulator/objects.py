"""Stripe object shapes. Every object starts from Stripe's own published example of its type
(`sandbox/data/stripe_fixtures.json`), with the example values replaced by neutral defaults, so
the emulator's objects carry every field Stripe's do."""

from __future__ import annotations

import json
import random
import secrets
import string
from functools import cache
from importlib import resources
from typing import Any

ALPHABET = string.ascii_letters + string.digits

PREFIXES = {
    "customer": "cus",
    "product": "prod",
    "price": "price",
    "subscription": "sub",
    "subscription_item": "si",
    "invoice": "in",
    "line_item": "il",
    "event": "evt",
    "request": "req",
    "webhook_endpoint": "we",
    "discount": "di",
    "invoiceitem": "ii",
    "payment_record": "pr",
    "invoice_payment": "inpay",
    "subscription_schedule": "sub_sched",
}
KIND_BY_PREFIX = {v: k for k, v in PREFIXES.items()}


_ids = random.Random(secrets.randbits(64))  # ids need to be unique, not secret


def new_id(kind: str) -> str:
    suffix = "".join(_ids.choices(ALPHABET, k=24 if kind != "customer" else 14))
    return f"{PREFIXES[kind]}_{suffix}"


def clone(obj: Any) -> Any:
    """A deep copy of JSON-shaped data: new dicts and lists, shared (immutable) strings.
    Several times faster than `copy.deepcopy`, and lighter than a JSON round trip."""
    if type(obj) is dict:
        return {key: clone(value) for key, value in obj.items()}
    if type(obj) is list:
        return [clone(value) for value in obj]
    return obj


def kind_of(object_id: str) -> str | None:
    if object_id.startswith("sub_sched_"):
        return "subscription_schedule"
    return KIND_BY_PREFIX.get(object_id.split("_", 1)[0])


@cache
def fixtures() -> dict[str, dict[str, Any]]:
    text = resources.files("sf_bridge.sandbox").joinpath("data/stripe_fixtures.json").read_text()
    data: dict[str, dict[str, Any]] = json.loads(text)["resources"]
    return data


ADDRESS = {"city": None, "country": None, "line1": None, "line2": None, "postal_code": None,
           "state": None}  # fmt: skip

NEUTRAL: dict[str, dict[str, Any]] = {
    "customer": {
        "address": None,
        "balance": 0,
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": None,
        "discount": None,
        "email": None,
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "metadata": {},
        "name": None,
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    },
    "product": {
        "default_price": None,
        "description": None,
        "images": [],
        "marketing_features": [],
        "metadata": {},
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": None,
        "unit_label": None,
        "url": None,
        "type": "service",
    },
    "price": {
        "billing_scheme": "per_unit",
        "custom_unit_amount": None,
        "lookup_key": None,
        "metadata": {},
        "nickname": None,
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
    },
    "plan": {
        "billing_scheme": "per_unit",
        "metadata": {},
        "meter": None,
        "nickname": None,
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": None,
        "usage_type": "licensed",
    },
    "subscription_item": {
        "discounts": [],
        "metadata": {},
        "tax_rates": [],
        "billing_thresholds": None,
    },
    "subscription": {
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"enabled": False, "liability": None, "disabled_reason": None},
        "billing_cycle_anchor_config": None,
        "cancel_at": None,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "days_until_due": None,
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "ended_at": None,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "latest_invoice": None,
        "metadata": {},
        "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None,
        "pause_collection": None,
        "payment_settings": {
            "payment_method_options": None,
            "payment_method_types": None,
            "save_default_payment_method": "off",
        },
        "pending_invoice_item_interval": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "test_clock": None,
        "transfer_data": None,
        "trial_end": None,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": None,
        "cancel_at_period_end": False,
        "billing_thresholds": None,
        "billing_mode": {"type": "classic"},
        "customer_account": None,
        "managed_payments": {"enabled": False},
        "billing_schedules": [],
    },
    "invoice": {
        "account_name": "sf-bridge sandbox",
        "account_tax_ids": None,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0,
        "attempted": False,
        "automatic_tax": {
            "enabled": False,
            "liability": None,
            "status": None,
            "disabled_reason": None,
            "provider": None,
        },
        "custom_fields": None,
        "customer_address": None,
        "customer_email": None,
        "customer_name": None,
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "metadata": {},
        "next_payment_attempt": None,
        "number": None,
        "on_behalf_of": None,
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "test_clock": None,
        "total_discount_amounts": [],
        "webhooks_delivered_at": None,
        "automatically_finalizes_at": None,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "amount_overpaid": 0,
        "parent": None,
        "customer_account": None,
    },
    "line_item": {
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "metadata": {},
        "subscription": None,
        "pretax_credit_amounts": [],
        "taxes": [],
        "quantity_decimal": None,
    },
    "webhook_endpoint": {
        "api_version": None,
        "application": None,
        "description": None,
        "metadata": {},
        "status": "enabled",
    },
    "event": {
        "api_version": None,
        "pending_webhooks": 0,
        "request": {"id": None, "idempotency_key": None},
    },
}


# Fields Stripe's examples still carry that the pinned API version (`store.API_VERSION`) does
# not have: since 2025-03-31.basil an invoice names its subscription only under
# `parent.subscription_details.subscription`.
NOT_IN_API_VERSION: dict[str, tuple[str, ...]] = {"invoice": ("subscription",)}


@cache
def _template(kind: str) -> dict[str, Any]:
    obj = dict(fixtures()[kind])
    for name in NOT_IN_API_VERSION.get(kind, ()):
        obj.pop(name, None)
    obj.update(NEUTRAL.get(kind, {}))
    if "livemode" in obj:
        obj["livemode"] = False
    obj["object"] = kind
    return obj


def build(kind: str, **values: Any) -> dict[str, Any]:
    """A `kind` object with every field of Stripe's example, neutral defaults and `values`."""
    obj: dict[str, Any] = clone(_template(kind))
    obj.update(values)
    return obj


def invoice_subscription(invoice: dict[str, Any]) -> str | None:
    """The subscription that generated `invoice` (`parent.subscription_details`), or None."""
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    subscription = details.get("subscription")
    return subscription if isinstance(subscription, str) else None


def list_object(data: list[dict[str, Any]], url: str, has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def search_result(data: list[dict[str, Any]], url: str) -> dict[str, Any]:
    return {
        "object": "search_result",
        "data": data,
        "has_more": False,
        "next_page": None,
        "url": url,
    }

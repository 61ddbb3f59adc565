"""`POST /v1/invoices/create_preview`: the invoice a change would produce, creating nothing.

The change runs through the same code that would make it, inside `Store.preview()`, which
puts every object back afterwards (no object, event or id is kept). With a subscription and
`subscription_details`: `proration_behavior=always_invoice` previews the invoice the change
makes now (its proration lines); otherwise the subscription's next invoice, at the end of the
current period, with the pending prorations first. With a customer and
`subscription_details.items` but no subscription: the first invoice of a new subscription.
"""

from __future__ import annotations

from typing import Any

from . import subscriptions
from .catalog import Params
from .clock import add_interval
from .errors import StripeApiError
from .invoices import create_subscription_invoice
from .objects import clone
from .store import SYSTEM, RequestContext, Store

PREVIEW_PREFIX = "upcoming_"


def create_preview(store: Store, params: Params, ctx: RequestContext) -> dict[str, Any]:
    details = dict(params.get("subscription_details") or {})
    if not params.get("subscription") and not params.get("customer"):
        raise StripeApiError.invalid_request(
            "Missing required param: customer or subscription.",
            param="customer",
            code="parameter_missing",
        )
    with store.preview():
        if params.get("subscription"):
            invoice = _for_subscription(store, params["subscription"], details)
        else:
            invoice = _for_new_subscription(store, params, details)
        preview = clone(invoice)
    preview["id"] = PREVIEW_PREFIX + preview["id"]
    preview["status"] = "draft"
    preview["number"] = None
    preview["hosted_invoice_url"] = None
    preview["invoice_pdf"] = None
    preview["status_transitions"] = dict.fromkeys(preview["status_transitions"])
    preview["amount_paid"] = 0
    preview["amount_remaining"] = preview["amount_due"]
    return preview


def _for_subscription(store: Store, sub_id: str, details: Params) -> dict[str, Any]:
    sub = store.get("subscription", sub_id, param="subscription")
    change: Params = {
        key: details[key]
        for key in ("items", "proration_behavior", "proration_date", "metadata")
        if key in details
    }
    latest = sub["latest_invoice"]
    if change:
        subscriptions.update_subscription(store, sub_id, change, SYSTEM)
    if sub["latest_invoice"] != latest and details.get("proration_behavior") == "always_invoice":
        invoice: dict[str, Any] = store.objects["invoice"][sub["latest_invoice"]]
        return invoice
    first = sub["items"]["data"][0]
    start = first["current_period_end"]
    recurring = first["price"]["recurring"]
    end = add_interval(start, recurring["interval"], recurring["interval_count"])
    customer = store.objects["customer"][sub["customer"]]
    return create_subscription_invoice(
        store,
        sub,
        customer,
        "subscription_cycle",
        (start, end),
        start,
        (first["current_period_start"], start),
    )


def _for_new_subscription(store: Store, params: Params, details: Params) -> dict[str, Any]:
    if not details.get("items"):
        raise StripeApiError.invalid_request(
            "Missing required param: subscription_details[items].",
            param="subscription_details[items]",
            code="parameter_missing",
        )
    create: Params = {"customer": params["customer"], "items": details["items"]}
    if params.get("discounts"):
        create["discounts"] = params["discounts"]
    sub = subscriptions.create_subscription(store, create, SYSTEM)
    invoice: dict[str, Any] = store.objects["invoice"][sub["latest_invoice"]]
    return invoice

"""`POST /v1/invoices/create_preview`: the invoice a change would produce, creating nothing.

The change runs through the same code that would make it, inside `Store.preview()`, which
puts every object back afterwards (no object, event or id is kept). With a subscription and
`subscription_details`: `proration_behavior=always_invoice` previews the invoice the change
makes now (its proration lines); otherwise the subscription's next invoice, at the end of the
current period, with the pending prorations first. With a customer and
`subscription_details.items` but no subscription: the first invoice of a new subscription.
With a `schedule` (or a customer and `schedule_details.phases`): the schedule's next invoice,
or its first when it has not started; a renewal that starts a new phase bills that phase.
"""

from __future__ import annotations

from typing import Any

from . import schedules, subscriptions
from .catalog import Params
from .clock import add_interval
from .errors import StripeApiError
from .invoices import create_subscription_invoice
from .objects import clone
from .store import SYSTEM, RequestContext, Store

PREVIEW_PREFIX = "upcoming_"


def create_preview(store: Store, params: Params, ctx: RequestContext) -> dict[str, Any]:
    details = dict(params.get("subscription_details") or {})
    if not any(params.get(key) for key in ("subscription", "customer", "schedule")):
        raise StripeApiError.invalid_request(
            "Missing required param: customer, subscription or schedule.",
            param="customer",
            code="parameter_missing",
        )
    with store.preview(_customer_of(store, params)):
        if params.get("schedule") or params.get("schedule_details"):
            invoice = _for_schedule(store, params)
        elif params.get("subscription"):
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
    schedule = store.objects["subscription_schedule"].get(sub["schedule"] or "")
    if schedule is not None and (start, "phase", schedule["id"]) in schedules.due(schedule):
        schedules.advance(store, schedule, start)  # the next phase sets what renews
        first = sub["items"]["data"][0]
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


def _for_schedule(store: Store, params: Params) -> dict[str, Any]:
    """A schedule's next invoice: with `schedule_details.phases` applied (to the schedule
    given, or to a new one of `customer`); the first invoice when it has not started."""
    details = dict(params.get("schedule_details") or {})
    if params.get("schedule"):
        schedule = store.get("subscription_schedule", params["schedule"], param="schedule")
        change = {key: details[key] for key in ("phases", "end_behavior") if key in details}
        if change:
            schedules.update_schedule(store, schedule["id"], change, SYSTEM)
    else:
        create: Params = {"customer": params.get("customer"), "phases": details.get("phases")}
        if "end_behavior" in details:
            create["end_behavior"] = details["end_behavior"]
        schedule = schedules.create_schedule(store, create, SYSTEM)
        if schedule["subscription"]:  # started now: its first invoice is the next one
            sub = store.objects["subscription"][schedule["subscription"]]
            made: dict[str, Any] = store.objects["invoice"][sub["latest_invoice"]]
            return made
    if schedule["status"] == "not_started":
        schedules.advance(store, schedule, schedule["phases"][0]["start_date"])
        sub = store.objects["subscription"][schedule["subscription"]]
        invoice: dict[str, Any] = store.objects["invoice"][sub["latest_invoice"]]
        return invoice
    if not schedule["subscription"]:
        raise StripeApiError.invalid_request(
            f"The schedule is {schedule['status']}; it has no invoice to preview.",
            param="schedule",
        )
    return _for_subscription(store, schedule["subscription"], {})


def _customer_of(store: Store, params: Params) -> str | None:
    """The customer whose billing the preview changes (None: unknown, keep everything)."""
    if params.get("schedule"):
        schedule = store.objects["subscription_schedule"].get(params["schedule"])
        return schedule["customer"] if schedule else None
    if params.get("subscription"):
        sub = store.objects["subscription"].get(params["subscription"])
        return sub["customer"] if sub else None
    customer = params.get("customer")
    return customer if isinstance(customer, str) else None

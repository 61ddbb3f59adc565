"""Subscriptions: create (with its first invoice), update, cancel, list filters."""

from __future__ import annotations

import contextlib
from typing import Any

from . import discounts, prorations
from .catalog import Params
from .clock import add_interval
from .errors import StripeApiError
from .invoices import (
    FAILING_PAYMENT_METHODS,
    card_declined,
    charge,
    create_subscription_invoice,
    finalize,
)
from .items import (
    check_compatible,
    check_item_count,
    item_object,
    keep_inline_prices,
    plan_from_price,
    quantity_of,
    resolve_item_price,
)
from .objects import build, clone, list_object, new_id
from .store import RequestContext, Store, merge_metadata

SUBSCRIPTION_SEARCH_FIELDS = frozenset({"created", "metadata", "status"})
COLLECTION_METHODS = ("charge_automatically", "send_invoice")
ENDED = ("canceled", "incomplete_expired")


def _check_method(method: str) -> str:
    if method not in COLLECTION_METHODS:
        raise StripeApiError.invalid_request(
            "Invalid collection_method: must be one of charge_automatically or send_invoice",
            param="collection_method",
        )
    return method


def _check_single_currency(store: Store, customer: dict[str, Any], currency: str) -> None:
    """Stripe bills one customer in one currency while anything of theirs is still live."""
    held = customer["currency"]
    if held is None or held == currency:
        return
    live = any(
        sub["customer"] == customer["id"] and sub["status"] not in ENDED
        for sub in store.objects["subscription"].values()
    ) or any(
        invoice["customer"] == customer["id"] and invoice["status"] in ("draft", "open")
        for invoice in store.objects["invoice"].values()
    )
    if live:
        raise StripeApiError.invalid_request(
            "You cannot combine currencies on a single customer. This customer has an active "
            f"subscription, subscription schedule, discount, quote, or invoice item with "
            f"currency {held}."
        )


def create_subscription(
    store: Store,
    params: Params,
    ctx: RequestContext,
    *,
    start: int | None = None,
    schedule: str | None = None,
) -> dict[str, Any]:
    """`start` backdates it to when a schedule started it (the clock may have jumped)."""
    if not params.get("customer"):
        raise StripeApiError.invalid_request(
            "Missing required param: customer.", param="customer", code="parameter_missing"
        )
    customer = store.get("customer", params["customer"], param="customer")
    items = params.get("items") or []
    if not items:
        raise StripeApiError.invalid_request(
            "Missing required param: items.", param="items", code="parameter_missing"
        )
    check_item_count(len(items))
    method = _check_method(params.get("collection_method", "charge_automatically"))
    days = params.get("days_until_due")
    if method == "send_invoice" and days is None:
        raise StripeApiError.invalid_request(
            "Missing required param: days_until_due.",
            param="days_until_due",
            code="parameter_missing",
        )
    if method != "send_invoice" and days is not None:
        raise StripeApiError.invalid_request(
            "Invalid days_until_due: can only be set when collection_method is send_invoice",
            param="days_until_due",
        )
    prices = [resolve_item_price(store, item, i) for i, item in enumerate(items)]
    quantities = [quantity_of(item, f"items[{i}]") for i, item in enumerate(items)]
    check_compatible(prices)
    pm = (
        params.get("default_payment_method")
        or customer["invoice_settings"]["default_payment_method"]
    )
    behavior = params.get("payment_behavior", "allow_incomplete")
    if method == "charge_automatically" and behavior == "error_if_incomplete":
        if not pm:
            raise StripeApiError.invalid_request(
                "This customer has no attached payment source or default payment method. "
                "Please consider adding a default payment method.",
                code="resource_missing",
            )
        if pm in FAILING_PAYMENT_METHODS:
            raise card_declined()
    now = start if start is not None else store.now()
    backdate = params.get("backdate_start_date")
    if backdate is not None:
        # Backdated (no billing_cycle_anchor): the cycle is anchored at the past start, and
        # the first invoice bills the period that began then.
        if int(backdate) > now:
            raise StripeApiError.invalid_request(
                "backdate_start_date must be in the past.", param="backdate_start_date"
            )
        now = int(backdate)
    recurring = prices[0]["recurring"]
    period = (now, add_interval(now, recurring["interval"], recurring["interval_count"]))
    sub_id = new_id("subscription")
    sub = build(
        "subscription",
        id=sub_id,
        created=now if backdate is None else store.now(),
        start_date=now,
        billing_cycle_anchor=now,
        collection_method=method,
        days_until_due=days,
        currency=prices[0]["currency"],
        customer=customer["id"],
        default_payment_method=params.get("default_payment_method"),
        description=params.get("description") or None,
        metadata=merge_metadata({}, params.get("metadata", {})),
        cancel_at_period_end=bool(params.get("cancel_at_period_end", False)),
        status="active",
        schedule=schedule,
    )
    sub["items"] = list_object(
        [
            item_object(store, sub_id, price, quantity, item, period)
            for price, quantity, item in zip(prices, quantities, items, strict=True)
        ],
        f"/v1/subscription_items?subscription={sub_id}",
    )
    _check_single_currency(store, customer, sub["currency"])
    sub["discounts"] = discounts.attach(
        store,
        params.get("discounts"),
        customer=customer["id"],
        subscription=sub_id,
        currency=sub["currency"],
    )
    customer["currency"] = sub["currency"]
    keep_inline_prices(store, prices)
    store.add(sub)
    invoice = create_subscription_invoice(store, sub, customer, "subscription_create", period)
    sub["latest_invoice"] = invoice["id"]
    if method == "charge_automatically":
        sub["status"] = "incomplete"
    store.emit("customer.subscription.created", sub, ctx)
    store.emit("invoice.created", invoice, ctx)
    if method == "charge_automatically":
        finalize(store, invoice, ctx)
        if pm and invoice["status"] == "open":
            with contextlib.suppress(StripeApiError):  # declined: the subscription stays
                charge(store, invoice, pm, ctx)  # incomplete, as with allow_incomplete
    return sub


SUB_UPDATABLE = ("description", "cancel_at_period_end", "default_payment_method")


def update_subscription(
    store: Store, sub_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    """Applies every change or none: a refused update leaves the subscription as it was."""
    sub = store.get("subscription", sub_id)
    original = clone(sub)
    try:
        return _update(store, sub, params, ctx)
    except StripeApiError:
        sub.clear()
        sub.update(original)
        raise


def _update(
    store: Store, sub: dict[str, Any], params: Params, ctx: RequestContext
) -> dict[str, Any]:
    if sub["status"] in ("canceled", "incomplete_expired"):
        allowed = {"metadata", "cancellation_details", "expand"}
        if set(params) - allowed:
            raise StripeApiError.invalid_request(
                "A canceled subscription can only update its cancellation_details and metadata."
            )
    previous: dict[str, Any] = {}
    for field in SUB_UPDATABLE:
        if field in params and sub[field] != params[field]:
            previous[field] = sub[field]
            sub[field] = params[field] if params[field] != "" else None
    if "metadata" in params:
        merged = merge_metadata(sub["metadata"], params["metadata"])
        if merged != sub["metadata"]:
            previous["metadata"] = sub["metadata"]
            sub["metadata"] = merged
    if "collection_method" in params:
        _check_method(params["collection_method"])
    if "collection_method" in params and params["collection_method"] != sub["collection_method"]:
        previous["collection_method"] = sub["collection_method"]
        sub["collection_method"] = params["collection_method"]
    if "days_until_due" in params and params["days_until_due"] != sub["days_until_due"]:
        previous["days_until_due"] = sub["days_until_due"]
        sub["days_until_due"] = params["days_until_due"]
    if sub["collection_method"] == "send_invoice" and sub["days_until_due"] is None:
        raise StripeApiError.invalid_request(
            "Missing required param: days_until_due.",
            param="days_until_due",
            code="parameter_missing",
        )
    behavior = prorations.check_behavior(params)
    proration_items: list[dict[str, Any]] = []
    if "items" in params:
        old_items = clone(sub["items"])
        first = old_items["data"][0]
        period = (first["current_period_start"], first["current_period_end"])
        at = prorations.proration_date(store, params, period)
        _update_items(store, sub, params["items"])
    # Discounts and prorations are objects of their own: made once nothing can be refused.
    if "discounts" in params:
        ids = discounts.attach(
            store,
            params["discounts"],
            customer=sub["customer"],
            subscription=sub["id"],
            currency=sub["currency"],
        )
        if ids != sub["discounts"]:
            previous["discounts"] = sub["discounts"]
            sub["discounts"] = ids
    if "items" in params and sub["items"] != old_items:
        previous["items"] = old_items
        if behavior != "none" and sub["status"] in ("active", "past_due", "trialing"):
            proration_items = prorations.prorate(
                store, sub, old_items["data"], sub["items"]["data"], at, period
            )
    if "cancellation_details" in params:
        sub["cancellation_details"].update(params["cancellation_details"] or {})
    invoice = None
    if behavior == "always_invoice" and proration_items:
        customer = store.objects["customer"][sub["customer"]]
        period = (proration_items[0]["period"]["start"], proration_items[0]["period"]["end"])
        invoice = create_subscription_invoice(
            store, sub, customer, "subscription_update", period, items=False
        )
        previous["latest_invoice"] = sub["latest_invoice"]
        sub["latest_invoice"] = invoice["id"]
    if previous:
        store.emit("customer.subscription.updated", sub, ctx, previous)
    if invoice is not None:
        store.emit("invoice.created", invoice, ctx)
        if sub["collection_method"] == "charge_automatically":
            finalize(store, invoice, ctx)
            pm = (
                sub["default_payment_method"]
                or store.objects["customer"][sub["customer"]]["invoice_settings"][
                    "default_payment_method"
                ]
            )
            if pm and invoice["status"] == "open":
                with contextlib.suppress(StripeApiError):  # declined: the invoice stays open
                    charge(store, invoice, pm, ctx)
    return sub


def _update_items(store: Store, sub: dict[str, Any], updates: list[Params]) -> None:
    check_item_count(len(updates))
    current = {item["id"]: item for item in sub["items"]["data"]}
    period = (
        sub["items"]["data"][0]["current_period_start"],
        sub["items"]["data"][0]["current_period_end"],
    )
    for index, update in enumerate(updates):
        prefix = f"items[{index}]"
        item_id = update.get("id")
        if item_id:
            item = current.get(item_id)
            if item is None:
                raise StripeApiError.missing("subscription item", item_id, f"{prefix}[id]")
            if update.get("deleted"):
                del current[item_id]
                continue
            if update.get("price") or update.get("price_data"):
                price = resolve_item_price(store, update, index)
                item["price"] = clone(price)
                item["plan"] = plan_from_price(price)
            if "quantity" in update:
                item["quantity"] = quantity_of(update, prefix)
            if "metadata" in update:
                item["metadata"] = merge_metadata(item["metadata"], update["metadata"])
        else:
            price = resolve_item_price(store, update, index)
            new = item_object(store, sub["id"], price, quantity_of(update, prefix), update, period)
            current[new["id"]] = new
    if not current:
        raise StripeApiError.invalid_request(
            "A subscription must have at least one active plan.", param="items"
        )
    check_item_count(len(current))
    check_compatible([item["price"] for item in current.values()])
    keep_inline_prices(store, [clone(item["price"]) for item in current.values()])
    sub["items"]["data"] = list(current.values())


def cancel_subscription(
    store: Store, sub_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    sub = store.get("subscription", sub_id)
    if sub["status"] == "canceled":
        raise StripeApiError.missing("subscription", sub_id)
    now = store.now()
    sub["status"] = "canceled"
    sub["canceled_at"] = now
    sub["ended_at"] = now
    details = params.get("cancellation_details") or {}
    sub["cancellation_details"] = {
        "comment": details.get("comment") or None,
        "feedback": details.get("feedback") or None,
        "reason": "cancellation_requested",
    }
    store.emit("customer.subscription.deleted", sub, ctx)
    return sub


def subscription_filter(params: Params) -> Any:
    status = params.get("status")

    def keep(sub: dict[str, Any]) -> bool:
        if params.get("customer") and sub["customer"] != params["customer"]:
            return False
        if (
            params.get("collection_method")
            and sub["collection_method"] != params["collection_method"]
        ):
            return False
        if params.get("price") and all(
            item["price"]["id"] != params["price"] for item in sub["items"]["data"]
        ):
            return False
        if status == "all":
            return True
        if status:
            return bool(sub["status"] == status)
        return bool(sub["status"] != "canceled")

    return keep

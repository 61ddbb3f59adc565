"""Subscriptions and their invoices: creation, updates, cancellation, finalize, send, pay,
void, and what the passing of time does to them (auto-finalization, overdue)."""

from __future__ import annotations

import copy
from typing import Any

from .catalog import Params, price_object
from .clock import SECONDS_PER_DAY, add_interval
from .errors import StripeApiError
from .objects import build, list_object, new_id
from .store import SYSTEM, RequestContext, Store, merge_metadata

SUBSCRIPTION_SEARCH_FIELDS = frozenset({"created", "metadata", "status"})
INVOICE_SEARCH_FIELDS = frozenset(
    {"created", "currency", "customer", "metadata", "number", "status", "subscription", "total"}
)
AUTO_FINALIZE_AFTER = 3600  # Stripe finalizes a subscription's draft invoice about 1 h later
# Test payment methods whose charges fail, as Stripe's test cards do.
FAILING_PAYMENT_METHODS = frozenset(
    {"pm_card_chargeCustomerFail", "pm_card_visa_chargeDeclined", "pm_card_chargeDeclined"}
)


# ---------------------------------------------------------------------------- items


def _plan_from_price(price: dict[str, Any]) -> dict[str, Any]:
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


def _resolve_item_price(
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
    )
    store.add(price)
    return price


def _quantity(item: Params, prefix: str) -> int:
    quantity = int(item.get("quantity", 1))
    if quantity < 0:
        raise StripeApiError.invalid_request(
            "This value must be greater than or equal to 0.",
            param=f"{prefix}[quantity]",
            code="parameter_invalid_integer",
        )
    return quantity


def _item_object(
    store: Store, sub_id: str, price: dict[str, Any], quantity: int, item: Params, period: tuple
) -> dict[str, Any]:
    item_id = new_id("subscription_item")
    store.items[item_id] = sub_id
    return build(
        "subscription_item",
        id=item_id,
        created=store.now(),
        price=copy.deepcopy(price),
        plan=_plan_from_price(price),
        quantity=quantity,
        subscription=sub_id,
        metadata=merge_metadata({}, item.get("metadata", {})),
        current_period_start=period[0],
        current_period_end=period[1],
    )


def _check_compatible(prices: list[dict[str, Any]]) -> None:
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


# ---------------------------------------------------------------------------- subscriptions


def create_subscription(store: Store, params: Params, ctx: RequestContext) -> dict[str, Any]:
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
    method = params.get("collection_method", "charge_automatically")
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
    prices = [_resolve_item_price(store, item, i) for i, item in enumerate(items)]
    quantities = [_quantity(item, f"items[{i}]") for i, item in enumerate(items)]
    _check_compatible(prices)
    pm = (
        params.get("default_payment_method")
        or customer["invoice_settings"]["default_payment_method"]
    )
    behavior = params.get("payment_behavior", "allow_incomplete")
    if method == "charge_automatically" and not pm and behavior == "error_if_incomplete":
        raise StripeApiError.invalid_request(
            "This customer has no attached payment source or default payment method. Please "
            "consider adding a default payment method.",
            code="resource_missing",
        )
    now = store.now()
    recurring = prices[0]["recurring"]
    period = (now, add_interval(now, recurring["interval"], recurring["interval_count"]))
    sub_id = new_id("subscription")
    sub = build(
        "subscription",
        id=sub_id,
        created=now,
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
    )
    sub["items"] = list_object(
        [
            _item_object(store, sub_id, price, quantity, item, period)
            for price, quantity, item in zip(prices, quantities, items, strict=True)
        ],
        f"/v1/subscription_items?subscription={sub_id}",
    )
    if customer["currency"] is None:
        customer["currency"] = sub["currency"]
    store.add(sub)
    invoice = _create_invoice(store, sub, customer, "subscription_create", period)
    sub["latest_invoice"] = invoice["id"]
    if method == "charge_automatically":
        sub["status"] = "incomplete"
    store.emit("customer.subscription.created", sub, ctx)
    store.emit("invoice.created", invoice, ctx)
    if method == "charge_automatically":
        _finalize(store, invoice, ctx)
        if pm and invoice["status"] == "open":
            _charge(store, invoice, pm, ctx)
    return sub


SUB_UPDATABLE = ("description", "cancel_at_period_end", "default_payment_method")


def update_subscription(
    store: Store, sub_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    sub = store.get("subscription", sub_id)
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
    if "items" in params:
        old_items = copy.deepcopy(sub["items"])
        _update_items(store, sub, params["items"])
        if sub["items"] != old_items:
            previous["items"] = old_items
    if "cancellation_details" in params:
        sub["cancellation_details"].update(params["cancellation_details"] or {})
    if previous:
        store.emit("customer.subscription.updated", sub, ctx, previous)
    return sub


def _update_items(store: Store, sub: dict[str, Any], updates: list[Params]) -> None:
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
                price = _resolve_item_price(store, update, index)
                item["price"] = copy.deepcopy(price)
                item["plan"] = _plan_from_price(price)
            if "quantity" in update:
                item["quantity"] = _quantity(update, prefix)
            if "metadata" in update:
                item["metadata"] = merge_metadata(item["metadata"], update["metadata"])
        else:
            price = _resolve_item_price(store, update, index)
            new = _item_object(store, sub["id"], price, _quantity(update, prefix), update, period)
            current[new["id"]] = new
    if not current:
        raise StripeApiError.invalid_request(
            "A subscription must have at least one active plan.", param="items"
        )
    _check_compatible([item["price"] for item in current.values()])
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


def set_subscription_status(
    store: Store, sub: dict[str, Any], status: str, ctx: RequestContext
) -> None:
    if sub["status"] == status or sub["status"] == "canceled":
        return
    previous = {"status": sub["status"]}
    sub["status"] = status
    store.emit("customer.subscription.updated", sub, ctx, previous)


# ---------------------------------------------------------------------------- invoices


def _create_invoice(
    store: Store,
    sub: dict[str, Any],
    customer: dict[str, Any],
    reason: str,
    period: tuple[int, int],
) -> dict[str, Any]:
    now = store.now()
    invoice_id = new_id("invoice")
    lines = [_line(store, invoice_id, sub, item, period) for item in sub["items"]["data"]]
    total = sum(line["amount"] for line in lines)
    invoice = build(
        "invoice",
        id=invoice_id,
        created=now,
        period_start=period[0],
        period_end=period[0],
        currency=sub["currency"],
        customer=customer["id"],
        customer_email=customer["email"],
        customer_name=customer["name"],
        customer_phone=customer["phone"],
        customer_address=copy.deepcopy(customer["address"]),
        collection_method=sub["collection_method"],
        billing_reason=reason,
        subscription=sub["id"],
        parent={
            "quote_details": None,
            "subscription_details": {
                "metadata": copy.deepcopy(sub["metadata"]),
                "subscription": sub["id"],
            },
            "type": "subscription_details",
        },
        lines=list_object(lines, f"/v1/invoices/{invoice_id}/lines"),
        amount_due=total,
        amount_paid=0,
        amount_remaining=total,
        subtotal=total,
        subtotal_excluding_tax=total,
        total=total,
        total_excluding_tax=total,
        status="draft",
        status_transitions={
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        account_country="US",
        auto_advance=True,
        default_payment_method=sub["default_payment_method"],
    )
    if sub["collection_method"] == "send_invoice":
        invoice["due_date"] = now + sub["days_until_due"] * SECONDS_PER_DAY
        invoice["automatically_finalizes_at"] = now + AUTO_FINALIZE_AFTER
    store.add(invoice)
    return invoice


def _line(
    store: Store,
    invoice_id: str,
    sub: dict[str, Any],
    item: dict[str, Any],
    period: tuple[int, int],
) -> dict[str, Any]:
    price = item["price"]
    product = store.objects["product"].get(price["product"])
    name = product["name"] if product else price["product"]
    amount = price["unit_amount"] * item["quantity"]
    interval = price["recurring"]["interval"]
    return build(
        "line_item",
        id=new_id("line_item"),
        amount=amount,
        subtotal=amount,
        currency=price["currency"],
        description=(
            f"{item['quantity']} \u00d7 {name} (at {price['unit_amount'] / 100:.2f} "
            f"{price['currency'].upper()} / {interval})"
        ),
        invoice=invoice_id,
        period={"start": period[0], "end": period[1]},
        quantity=item["quantity"],
        metadata=copy.deepcopy(sub["metadata"]),
        parent={
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": sub["id"],
                "subscription_item": item["id"],
            },
            "type": "subscription_item_details",
        },
        pricing={
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
    )


def _finalize(store: Store, invoice: dict[str, Any], ctx: RequestContext) -> None:
    now = store.now()
    customer = store.objects["customer"][invoice["customer"]]
    sequence = customer["next_invoice_sequence"]
    customer["next_invoice_sequence"] = sequence + 1
    invoice["number"] = f"{customer['invoice_prefix']}-{sequence:04d}"
    invoice["status"] = "open"
    invoice["status_transitions"]["finalized_at"] = now
    invoice["effective_at"] = now
    invoice["automatically_finalizes_at"] = None
    invoice["hosted_invoice_url"] = f"{store.base_url}/i/{invoice['id']}"
    invoice["invoice_pdf"] = f"{store.base_url}/i/{invoice['id']}/pdf"
    if invoice["collection_method"] == "send_invoice":
        sub = store.objects["subscription"].get(invoice["subscription"] or "")
        days = sub["days_until_due"] if sub and sub["days_until_due"] is not None else 30
        invoice["due_date"] = now + days * SECONDS_PER_DAY
    store.emit("invoice.finalized", invoice, ctx)
    if invoice["amount_due"] == 0:
        _mark_paid(store, invoice, ctx)


def _mark_paid(store: Store, invoice: dict[str, Any], ctx: RequestContext) -> None:
    invoice["status"] = "paid"
    invoice["amount_paid"] = invoice["amount_due"]
    invoice["amount_remaining"] = 0
    invoice["attempted"] = True
    invoice["status_transitions"]["paid_at"] = store.now()
    invoice["auto_advance"] = False
    store.emit("invoice.paid", invoice, ctx)
    sub = store.objects["subscription"].get(invoice["subscription"] or "")
    if (
        sub is not None
        and sub["status"] in ("incomplete", "past_due", "unpaid")
        and not _has_unpaid_overdue(store, sub["id"])
    ):
        set_subscription_status(store, sub, "active", ctx)


def _has_unpaid_overdue(store: Store, sub_id: str) -> bool:
    now = store.now()
    return any(
        inv["subscription"] == sub_id
        and inv["status"] == "open"
        and inv["due_date"] is not None
        and inv["due_date"] < now
        for inv in store.objects["invoice"].values()
    )


def _charge(store: Store, invoice: dict[str, Any], pm: str, ctx: RequestContext) -> None:
    invoice["attempt_count"] += 1
    invoice["attempted"] = True
    if pm in FAILING_PAYMENT_METHODS:
        store.emit("invoice.payment_failed", invoice, ctx)
        raise StripeApiError(
            402,
            "card_error",
            "Your card was declined.",
            code="card_declined",
            extra={"decline_code": "generic_decline"},
        )
    _mark_paid(store, invoice, ctx)


def finalize_invoice(
    store: Store, invoice_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    invoice = store.get("invoice", invoice_id)
    if invoice["status"] != "draft":
        raise StripeApiError.invalid_request(
            "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
            code="invoice_not_editable" if invoice["status"] != "open" else None,
        )
    if "auto_advance" in params:
        invoice["auto_advance"] = params["auto_advance"]
    _finalize(store, invoice, ctx)
    return invoice


def send_invoice(
    store: Store, invoice_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    invoice = store.get("invoice", invoice_id)
    if invoice["collection_method"] != "send_invoice":
        raise StripeApiError.invalid_request(
            "You can only manually send an invoice if its collection method is 'send_invoice'."
        )
    if invoice["status"] == "draft":
        _finalize(store, invoice, ctx)
    if invoice["status"] not in ("open", "paid"):
        raise StripeApiError.invalid_request(
            f"You can't send an invoice with status {invoice['status']}.",
            code="invoice_not_editable",
        )
    store.emit("invoice.sent", invoice, ctx)
    return invoice


def pay_invoice(
    store: Store, invoice_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    invoice = store.get("invoice", invoice_id)
    if invoice["status"] == "paid":
        raise StripeApiError.invalid_request("Invoice is already paid", code="invoice_already_paid")
    if invoice["status"] == "void":
        raise StripeApiError.invalid_request(
            "This invoice can no longer be paid because it has been voided.",
            code="invoice_not_editable",
        )
    if invoice["status"] == "draft":
        _finalize(store, invoice, ctx)
        if invoice["status"] == "paid":
            return invoice
    if params.get("paid_out_of_band"):
        _mark_paid(store, invoice, ctx)
        return invoice
    customer = store.objects["customer"][invoice["customer"]]
    pm = (
        params.get("payment_method")
        or invoice["default_payment_method"]
        or customer["invoice_settings"]["default_payment_method"]
    )
    if not pm:
        raise StripeApiError.invalid_request(
            "This customer has no attached payment source or default payment method. Please "
            "consider adding a default payment method.",
            code="resource_missing",
        )
    _charge(store, invoice, pm, ctx)
    return invoice


def void_invoice(
    store: Store, invoice_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    invoice = store.get("invoice", invoice_id)
    if invoice["status"] not in ("open", "uncollectible"):
        raise StripeApiError.invalid_request(
            f"You can only pass in open or uncollectible invoices. This invoice is "
            f"{invoice['status']}.",
            code="invoice_not_editable",
        )
    invoice["status"] = "void"
    invoice["amount_remaining"] = 0
    invoice["status_transitions"]["voided_at"] = store.now()
    invoice["auto_advance"] = False
    store.emit("invoice.voided", invoice, ctx)
    return invoice


def mark_uncollectible(
    store: Store, invoice_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    invoice = store.get("invoice", invoice_id)
    if invoice["status"] != "open":
        raise StripeApiError.invalid_request(
            f"You can only mark open invoices uncollectible. This invoice is {invoice['status']}.",
            code="invoice_not_editable",
        )
    invoice["status"] = "uncollectible"
    invoice["status_transitions"]["marked_uncollectible_at"] = store.now()
    store.emit("invoice.marked_uncollectible", invoice, ctx)
    return invoice


def update_invoice(
    store: Store, invoice_id: str, params: Params, ctx: RequestContext
) -> dict[str, Any]:
    invoice = store.get("invoice", invoice_id)
    previous: dict[str, Any] = {}
    if "metadata" in params:
        previous["metadata"] = invoice["metadata"]
        invoice["metadata"] = merge_metadata(invoice["metadata"], params["metadata"])
    editable = ("description", "footer", "auto_advance", "days_until_due", "due_date")
    touched = [f for f in editable if f in params]
    if touched and invoice["status"] != "draft" and set(touched) - {"auto_advance"}:
        raise StripeApiError.invalid_request(
            "You can only update the metadata of a finalized invoice.",
            code="invoice_not_editable",
        )
    for field in ("description", "footer", "auto_advance", "due_date"):
        if field in params:
            previous[field] = invoice[field]
            invoice[field] = params[field] if params[field] != "" else None
    if "days_until_due" in params:
        previous["due_date"] = invoice["due_date"]
        invoice["due_date"] = store.now() + int(params["days_until_due"]) * SECONDS_PER_DAY
    if previous:
        store.emit("invoice.updated", invoice, ctx, previous)
    return invoice


def invoice_filter(params: Params) -> Any:
    def keep(invoice: dict[str, Any]) -> bool:
        for field in ("customer", "subscription", "status", "collection_method"):
            if params.get(field) and invoice[field] != params[field]:
                return False
        return True

    return keep


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


# ---------------------------------------------------------------------------- passing time


def tick(store: Store) -> None:
    """What Stripe does on its own as time passes: finalize drafts whose hour has come, and
    flag open invoices past their due date (`invoice.overdue`, subscription `past_due`)."""
    now = store.now()
    for invoice in list(store.objects["invoice"].values()):
        due_to_finalize = invoice["automatically_finalizes_at"]
        if (
            invoice["status"] == "draft"
            and invoice["auto_advance"]
            and due_to_finalize is not None
            and due_to_finalize <= now
        ):
            _finalize(store, invoice, SYSTEM)
        if (
            invoice["status"] == "open"
            and invoice["due_date"] is not None
            and invoice["due_date"] < now
            and invoice["id"] not in store.overdue_sent
        ):
            mark_overdue(store, invoice)


def mark_overdue(store: Store, invoice: dict[str, Any]) -> None:
    store.overdue_sent.add(invoice["id"])
    store.emit("invoice.overdue", invoice, SYSTEM)
    sub = store.objects["subscription"].get(invoice["subscription"] or "")
    if sub is not None and sub["status"] == "active":
        set_subscription_status(store, sub, "past_due", SYSTEM)

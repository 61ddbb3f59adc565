"""Invoices: the first invoice of a subscription, finalize (number, hosted page, PDF, due
date), send, pay (charged or out of band), void, mark uncollectible, update."""

from __future__ import annotations

from typing import Any

from . import discounts, prorations
from .catalog import Params
from .clock import SECONDS_PER_DAY
from .errors import StripeApiError
from .objects import build, clone, invoice_subscription, list_object, new_id
from .store import RequestContext, Store, merge_metadata

INVOICE_SEARCH_FIELDS = frozenset(
    {"created", "currency", "customer", "metadata", "number", "status", "subscription", "total"}
)
AUTO_FINALIZE_AFTER = 3600  # Stripe finalizes a subscription's draft invoice about 1 h later
# Test payment methods whose charges fail, as Stripe's test cards do.
FAILING_PAYMENT_METHODS = frozenset(
    {"pm_card_chargeCustomerFail", "pm_card_visa_chargeDeclined", "pm_card_chargeDeclined"}
)


def card_declined() -> StripeApiError:
    return StripeApiError(
        402,
        "card_error",
        "Your card was declined.",
        code="card_declined",
        extra={"decline_code": "generic_decline"},
    )


def set_subscription_status(
    store: Store, sub: dict[str, Any], status: str, ctx: RequestContext
) -> None:
    if sub["status"] == status or sub["status"] == "canceled":
        return
    previous = {"status": sub["status"]}
    sub["status"] = status
    store.emit("customer.subscription.updated", sub, ctx, previous)


def create_subscription_invoice(
    store: Store,
    sub: dict[str, Any],
    customer: dict[str, Any],
    reason: str,
    period: tuple[int, int],
    at: int | None = None,
    invoice_period: tuple[int, int] | None = None,
    *,
    items: bool = True,
    invoice_id: str | None = None,
) -> dict[str, Any]:
    """The subscription's next invoice: its pending invoice items (prorations) first, then
    one line per item for `period` (none when `items` is False: a proration invoice), less
    the subscription's discounts."""
    now = at if at is not None else store.now()
    invoice_period = invoice_period or (period[0], period[0])
    invoice_id = invoice_id or new_id("invoice")
    pending = prorations.pending_for(store, sub["id"])
    lines = [_pending_line(invoice_id, sub, ii) for ii in pending]
    for ii in pending:
        ii["invoice"] = invoice_id
    if items:
        lines += [_line(store, invoice_id, sub, item, period) for item in sub["items"]["data"]]
    total = sum(line["amount"] for line in lines)
    invoice = build(
        "invoice",
        id=invoice_id,
        created=now,
        period_start=invoice_period[0],
        period_end=invoice_period[1],
        currency=sub["currency"],
        customer=customer["id"],
        customer_email=customer["email"],
        customer_name=customer["name"],
        customer_phone=customer["phone"],
        customer_address=clone(customer["address"]),
        collection_method=sub["collection_method"],
        billing_reason=reason,
        parent={
            "quote_details": None,
            "subscription_details": {
                "metadata": clone(sub["metadata"]),
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
    discounts.apply(store, invoice, sub["discounts"])
    store.add(invoice)
    return invoice


def _pending_line(invoice_id: str, sub: dict[str, Any], ii: dict[str, Any]) -> dict[str, Any]:
    """An invoice item (a proration) as a line of the subscription's invoice."""
    details = ii["parent"]["subscription_details"]
    return build(
        "line_item",
        id=new_id("line_item"),
        amount=ii["amount"],
        subtotal=ii["amount"],
        currency=ii["currency"],
        description=ii["description"],
        discountable=ii["discountable"],
        invoice=invoice_id,
        period=clone(ii["period"]),
        quantity=ii["quantity"],
        metadata=clone(ii["metadata"]),
        parent={
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": ii["id"],
                "proration": bool(ii["proration"]),
                "proration_details": {"credited_items": None},
                "subscription": sub["id"],
                "subscription_item": details.get("subscription_item"),
            },
            "type": "subscription_item_details",
        },
        pricing=clone(ii["pricing"]),
    )


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
        metadata=clone(sub["metadata"]),
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


def finalize(
    store: Store, invoice: dict[str, Any], ctx: RequestContext, at: int | None = None
) -> None:
    """Draft -> open: number, hosted page and PDF links, due date. `at` backdates it to when
    Stripe would have done it (the emulator's clock may have jumped past that moment)."""
    now = at if at is not None else store.now()
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
        sub = store.objects["subscription"].get(invoice_subscription(invoice) or "")
        days = sub["days_until_due"] if sub and sub["days_until_due"] is not None else 30
        invoice["due_date"] = now + days * SECONDS_PER_DAY
    store.emit("invoice.finalized", invoice, ctx)
    if invoice["amount_due"] == 0:
        mark_paid(store, invoice, ctx)


def mark_paid(
    store: Store, invoice: dict[str, Any], ctx: RequestContext, charged: bool = False
) -> None:
    """Paid: `invoice.payment_succeeded` when a card was charged, then `invoice.paid`."""
    invoice["status"] = "paid"
    invoice["amount_paid"] = invoice["amount_due"]
    invoice["amount_remaining"] = 0
    invoice["attempted"] = True
    invoice["status_transitions"]["paid_at"] = store.now()
    invoice["auto_advance"] = False
    if charged:
        store.emit("invoice.payment_succeeded", invoice, ctx)
    store.emit("invoice.paid", invoice, ctx)
    sub = store.objects["subscription"].get(invoice_subscription(invoice) or "")
    if (
        sub is not None
        and sub["status"] in ("incomplete", "past_due", "unpaid")
        and not _has_unpaid_overdue(store, sub["id"])
    ):
        set_subscription_status(store, sub, "active", ctx)


def _has_unpaid_overdue(store: Store, sub_id: str) -> bool:
    now = store.now()
    return any(
        invoice_subscription(inv) == sub_id
        and inv["status"] == "open"
        and inv["due_date"] is not None
        and inv["due_date"] < now
        for inv in store.objects["invoice"].values()
    )


def charge(store: Store, invoice: dict[str, Any], pm: str, ctx: RequestContext) -> None:
    invoice["attempt_count"] += 1
    invoice["attempted"] = True
    if pm in FAILING_PAYMENT_METHODS:
        store.emit("invoice.payment_failed", invoice, ctx)
        raise card_declined()
    mark_paid(store, invoice, ctx, charged=True)


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
    finalize(store, invoice, ctx)
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
        finalize(store, invoice, ctx)
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
        finalize(store, invoice, ctx)
        if invoice["status"] == "paid":
            return invoice
    if params.get("paid_out_of_band"):
        mark_paid(store, invoice, ctx)
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
    charge(store, invoice, pm, ctx)
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
        for field in ("customer", "status", "collection_method"):
            if params.get(field) and invoice[field] != params[field]:
                return False
        return not params.get("subscription") or (
            invoice_subscription(invoice) == params["subscription"]
        )

    return keep

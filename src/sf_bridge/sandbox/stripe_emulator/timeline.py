"""What Stripe does on its own as time passes, run when the emulator's clock moves:
incomplete subscriptions expire after 23 hours, subscriptions renew at period end (a new
invoice each cycle, or cancellation when `cancel_at_period_end`), drafts finalize an hour
after creation, open invoices past their due date are flagged overdue, and subscription
schedules start their subscription and move from phase to phase ("phase" sorts before
"renew", so a phase that ends with a period sets the price the renewal bills)."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from . import schedules
from .clock import add_interval
from .errors import StripeApiError
from .invoices import (
    charge,
    create_subscription_invoice,
    finalize,
    set_subscription_status,
)
from .objects import clone, invoice_subscription
from .store import SYSTEM, Store

INCOMPLETE_EXPIRES_AFTER = 23 * 3600
RENEWING = ("active", "past_due", "unpaid")
Due = tuple[int, str, str]  # (when, what, object id)


def tick(store: Store) -> None:
    """Runs everything due by now in the order it would have happened."""
    now = store.now()
    queue: list[Due] = []
    for sub in store.objects["subscription"].values():
        queue.extend(_due_for_subscription(sub))
    for invoice in store.objects["invoice"].values():
        queue.extend(_due_for_invoice(store, invoice))
    for schedule in store.objects["subscription_schedule"].values():
        queue.extend(schedules.due(schedule))
    heapq.heapify(queue)
    while queue and queue[0][0] <= now:
        when, what, object_id = heapq.heappop(queue)
        kind = KIND_OF_ACTION.get(what, "subscription")
        obj = store.objects[kind][object_id]
        current = _due(store, kind, obj)
        if (when, what, object_id) not in current:
            continue  # superseded by an earlier action
        invoices_before = len(store.objects["invoice"])
        ACTIONS[what](store, obj, when)
        touched = [obj] if kind == "subscription" else []
        if kind == "subscription_schedule":
            touched = [s for s in [store.objects["subscription"].get(obj["subscription"] or "")]
                       if s is not None]  # fmt: skip
            for follow_up in schedules.due(obj):
                heapq.heappush(queue, follow_up)
        for sub in touched:
            for follow_up in _due_for_subscription(sub):
                heapq.heappush(queue, follow_up)
        affected = []
        if len(store.objects["invoice"]) > invoices_before:  # a renewal created one
            affected = list(store.objects["invoice"].values())[invoices_before:]
        if kind == "invoice":
            affected.append(obj)
        for invoice in affected:
            for follow_up in _due_for_invoice(store, invoice):
                heapq.heappush(queue, follow_up)


KIND_OF_ACTION = {"finalize": "invoice", "overdue": "invoice", "phase": "subscription_schedule"}


def _due(store: Store, kind: str, obj: dict[str, Any]) -> list[Due]:
    if kind == "invoice":
        return _due_for_invoice(store, obj)
    if kind == "subscription_schedule":
        return schedules.due(obj)
    return _due_for_subscription(obj)


def _due_for_subscription(sub: dict[str, Any]) -> list[Due]:
    if sub["status"] == "incomplete":
        return [(sub["created"] + INCOMPLETE_EXPIRES_AFTER, "expire", sub["id"])]
    items = sub["items"]["data"]
    if sub["status"] in RENEWING and items:
        return [(items[0]["current_period_end"], "renew", sub["id"])]
    return []


def _due_for_invoice(store: Store, invoice: dict[str, Any]) -> list[Due]:
    finalizes_at = invoice["automatically_finalizes_at"]
    if invoice["status"] == "draft" and invoice["auto_advance"] and finalizes_at is not None:
        return [(finalizes_at, "finalize", invoice["id"])]
    if (
        invoice["status"] == "open"
        and invoice["due_date"] is not None
        and invoice["id"] not in store.overdue_sent
    ):
        return [(invoice["due_date"] + 1, "overdue", invoice["id"])]
    return []


def _finalize_draft(store: Store, invoice: dict[str, Any], when: int) -> None:
    finalize(store, invoice, SYSTEM, at=when)


def _overdue(store: Store, invoice: dict[str, Any], when: int) -> None:
    mark_overdue(store, invoice)


def mark_overdue(store: Store, invoice: dict[str, Any]) -> None:
    """`invoice.overdue`; the subscription becomes `past_due` (Stripe's default settings)."""
    store.overdue_sent.add(invoice["id"])
    store.emit("invoice.overdue", invoice, SYSTEM)
    sub = store.objects["subscription"].get(invoice_subscription(invoice) or "")
    if sub is not None and sub["status"] == "active":
        set_subscription_status(store, sub, "past_due", SYSTEM)


def _expire_if_incomplete(store: Store, sub: dict[str, Any], now: int) -> None:
    invoice = store.objects["invoice"].get(sub["latest_invoice"] or "")
    if invoice is not None and invoice["status"] == "open":
        invoice["status"] = "void"
        invoice["amount_remaining"] = 0
        invoice["auto_advance"] = False
        invoice["status_transitions"]["voided_at"] = now
        store.emit("invoice.voided", invoice, SYSTEM)
    sub["ended_at"] = sub["created"] + INCOMPLETE_EXPIRES_AFTER
    set_subscription_status(store, sub, "incomplete_expired", SYSTEM)


def _renew(store: Store, sub: dict[str, Any], when: int) -> None:
    """One period ends: the next starts with its invoice, or the subscription ends."""
    items = sub["items"]["data"]
    start = items[0]["current_period_end"]
    if sub["cancel_at_period_end"]:
        sub["status"] = "canceled"
        sub["canceled_at"] = sub["canceled_at"] or start
        sub["ended_at"] = start
        sub["cancellation_details"]["reason"] = "cancellation_requested"
        store.emit("customer.subscription.deleted", sub, SYSTEM)
        return
    recurring = items[0]["price"]["recurring"]
    end = add_interval(start, recurring["interval"], recurring["interval_count"])
    previous = {"items": clone(sub["items"])}
    old_period = (items[0]["current_period_start"], start)
    for item in items:
        item["current_period_start"], item["current_period_end"] = start, end
    customer = store.objects["customer"][sub["customer"]]
    invoice = create_subscription_invoice(
        store, sub, customer, "subscription_cycle", (start, end), start, old_period
    )
    previous["latest_invoice"] = sub["latest_invoice"]
    sub["latest_invoice"] = invoice["id"]
    store.emit("customer.subscription.updated", sub, SYSTEM, previous)
    store.emit("invoice.created", invoice, SYSTEM)
    if sub["collection_method"] == "charge_automatically":
        _collect(store, sub, customer, invoice, start)


def _collect(
    store: Store, sub: dict[str, Any], customer: dict[str, Any], invoice: dict[str, Any], at: int
) -> None:
    """A renewal of a subscription that charges automatically: finalize and charge the card
    on file; without one, or when it is declined, the subscription goes `past_due`."""
    finalize(store, invoice, SYSTEM, at=at)
    if invoice["status"] != "open":
        return
    pm = sub["default_payment_method"] or customer["invoice_settings"]["default_payment_method"]
    try:
        if not pm:
            invoice["attempt_count"] += 1
            invoice["attempted"] = True
            store.emit("invoice.payment_failed", invoice, SYSTEM)
        else:
            charge(store, invoice, pm, SYSTEM)
    except StripeApiError:
        pass  # charge() has emitted invoice.payment_failed
    if invoice["status"] != "paid":
        set_subscription_status(store, sub, "past_due", SYSTEM)


ACTIONS: dict[str, Callable[[Store, dict[str, Any], int], None]] = {
    "expire": _expire_if_incomplete,
    "renew": _renew,
    "finalize": _finalize_draft,
    "overdue": _overdue,
    "phase": schedules.advance,
}

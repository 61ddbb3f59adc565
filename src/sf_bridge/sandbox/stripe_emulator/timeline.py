"""What Stripe does on its own as time passes, run when the emulator's clock moves."""

from __future__ import annotations

from typing import Any

from .invoices import finalize, set_subscription_status
from .store import SYSTEM, Store


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
            finalize(store, invoice, SYSTEM)
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

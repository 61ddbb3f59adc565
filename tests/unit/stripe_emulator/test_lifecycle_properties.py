"""Any sequence of operations and clock moves keeps Stripe's invariants: object shapes,
invoice states and amounts, numbering, and subscription/invoice links."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sf_bridge.sandbox.stripe_emulator import StripeEmulator, catalog, invoices, subscriptions
from sf_bridge.sandbox.stripe_emulator.errors import StripeApiError
from sf_bridge.sandbox.stripe_emulator.store import SYSTEM
from tests.fixtures.stripe import SAMPLE_CATALOG, pinned_fields

FIXTURES: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parents[2] / "data" / "stripe" / "fixtures.json").read_text()
)["resources"]
NEXT = {"draft": {"open", "paid", "void"}, "open": {"paid", "void", "uncollectible"},
        "uncollectible": {"paid", "void"}, "paid": set(), "void": set()}  # fmt: skip
KEYS = st.sampled_from(["starter_monthly", "pro_monthly", "pro_yearly"])


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.emu = StripeEmulator(now=lambda: 1_800_000_000)
        self.prices = self.emu.seed_catalog(SAMPLE_CATALOG)
        self.store = self.emu.store
        self.seen_status: dict[str, str] = {}

    def _ids(self, kind: str) -> list[str]:
        return list(self.store.objects[kind])

    def _attempt(self, operation: Any, *args: Any) -> None:
        """Runs an operation as an API request would; refusals must be client errors."""
        with self.store.lock:
            try:
                operation(self.store, *args, SYSTEM)
            except StripeApiError as exc:
                refused = exc
            else:
                return
        assert 400 <= refused.status < 500, refused.message

    @rule(card=st.sampled_from([None, "pm_card_visa", "pm_card_chargeCustomerFail"]))
    def customer(self, card: str | None) -> None:
        params: dict[str, Any] = {"name": "Acme"}
        if card:
            params["invoice_settings"] = {"default_payment_method": card}
        self._attempt(catalog.create_customer, params)

    @precondition(lambda self: self.store.objects["customer"])
    @rule(
        data=st.data(),
        method=st.sampled_from(["send_invoice", "charge_automatically"]),
        keys=st.lists(KEYS, min_size=1, max_size=2),
        quantity=st.integers(0, 5),
        override=st.one_of(st.none(), st.integers(0, 50_000)),
    )
    def subscribe(
        self, data: st.DataObject, method: str, keys: list[str], quantity: int, override: int | None
    ) -> None:
        customer = data.draw(st.sampled_from(self._ids("customer")))
        items: list[dict[str, Any]] = [
            {"price": self.prices[key], "quantity": quantity} for key in keys
        ]
        if override is not None:
            price = self.store.objects["price"][self.prices[keys[0]]]
            price_data = {
                "currency": "usd",
                "product": price["product"],
                "unit_amount": override,
                "recurring": {"interval": "month"},
            }
            items.append({"price_data": price_data})
        params: dict[str, Any] = {"customer": customer, "items": items, "collection_method": method}
        if method == "send_invoice":
            params["days_until_due"] = data.draw(st.integers(0, 60))
        self._attempt(subscriptions.create_subscription, params)

    @precondition(lambda self: self.store.objects["invoice"])
    @rule(
        data=st.data(),
        action=st.sampled_from(["finalize", "pay_oob", "pay", "void", "send", "uncollectible"]),
    )
    def invoice_action(self, data: st.DataObject, action: str) -> None:
        invoice_id = data.draw(st.sampled_from(self._ids("invoice")))
        operation, params = {
            "finalize": (invoices.finalize_invoice, {}),
            "pay_oob": (invoices.pay_invoice, {"paid_out_of_band": True}),
            "pay": (invoices.pay_invoice, {}),
            "void": (invoices.void_invoice, {}),
            "send": (invoices.send_invoice, {}),
            "uncollectible": (invoices.mark_uncollectible, {}),
        }[action]
        self._attempt(operation, invoice_id, params)

    @precondition(lambda self: self.store.objects["subscription"])
    @rule(data=st.data(), at_period_end=st.booleans())
    def cancel(self, data: st.DataObject, at_period_end: bool) -> None:
        sub_id = data.draw(st.sampled_from(self._ids("subscription")))
        if at_period_end:
            self._attempt(subscriptions.update_subscription, sub_id, {"cancel_at_period_end": True})
        else:
            self._attempt(subscriptions.cancel_subscription, sub_id, {})

    @rule(seconds=st.sampled_from([60, 3_600, 86_400, 15 * 86_400, 40 * 86_400]))
    def time_passes(self, seconds: int) -> None:
        self.emu.advance_clock(seconds)

    @invariant()
    def shapes_match_stripes_fixtures(self) -> None:
        for kind in ("customer", "price", "subscription", "invoice"):
            for obj in self.store.objects[kind].values():
                assert set(obj) == pinned_fields(FIXTURES[kind], kind), kind

    @invariant()
    def invoices_are_consistent(self) -> None:
        numbers: set[str] = set()
        for invoice in self.store.objects["invoice"].values():
            status = invoice["status"]
            before = self.seen_status.get(invoice["id"], status)
            assert status == before or status in NEXT[before], (before, status)
            self.seen_status[invoice["id"]] = status
            assert invoice["amount_due"] == sum(line["amount"] for line in invoice["lines"]["data"])
            if status == "paid":
                assert invoice["amount_paid"] == invoice["amount_due"]
                assert invoice["amount_remaining"] == 0
            elif status == "void":
                assert invoice["amount_remaining"] == 0
            else:
                assert invoice["amount_remaining"] == invoice["amount_due"] - invoice["amount_paid"]
            if status == "draft":
                assert invoice["number"] is None
                assert invoice["hosted_invoice_url"] is None
            else:
                assert invoice["number"] not in numbers
                numbers.add(invoice["number"])
                assert invoice["status_transitions"]["finalized_at"] is not None
                assert invoice["hosted_invoice_url"] is not None
            if invoice["collection_method"] == "send_invoice" and status != "draft":
                assert invoice["due_date"] >= invoice["status_transitions"]["finalized_at"]

    @invariant()
    def subscriptions_point_at_their_invoices(self) -> None:
        for sub in self.store.objects["subscription"].values():
            latest = self.store.objects["invoice"][sub["latest_invoice"]]
            assert latest["parent"]["subscription_details"]["subscription"] == sub["id"]
            assert latest["customer"] == sub["customer"]
            if sub["status"] == "incomplete":
                assert sub["collection_method"] == "charge_automatically"
            if sub["status"] in ("canceled", "incomplete_expired"):
                assert sub["ended_at"] is not None
            periods = {(i["current_period_start"], i["current_period_end"])
                       for i in sub["items"]["data"]}  # fmt: skip
            assert len(periods) == 1


Lifecycle.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
TestLifecycle = Lifecycle.TestCase

"""An in-memory `BillingGateway` for unit tests: Stripe's idempotency semantics, no HTTP.

Faults are scripted: `fail_next(operation, error)` makes the next call of that operation raise
`error` (before or after the change is applied, to imitate a lost response).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sf_bridge.billing.port import (
    BillingCustomer,
    BillingInvoice,
    BillingPrice,
    BillingSubscription,
    CustomerSpec,
    SubscriptionSpec,
)
from sf_bridge.errors import BillingRejected, SfBridgeError


@dataclass
class _Fault:
    error: SfBridgeError
    after_effect: bool  # True: the change happens, then the error (a lost response)


@dataclass
class InMemoryBilling:
    prices: dict[str, BillingPrice] = field(default_factory=dict)
    customers: dict[str, BillingCustomer] = field(default_factory=dict)
    subscriptions: dict[str, BillingSubscription] = field(default_factory=dict)
    subscription_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoices: dict[str, BillingInvoice] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    _idempotency: dict[str, tuple[str, Any]] = field(default_factory=dict)
    _faults: dict[str, list[_Fault]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # test helpers -------------------------------------------------------------------------

    def add_price(
        self,
        lookup_key: str,
        unit_amount: int,
        *,
        currency: str = "usd",
        interval: str = "month",
        active: bool = True,
    ) -> BillingPrice:
        n = next(self._ids)
        price = BillingPrice(
            id=f"price_{n}",
            lookup_key=lookup_key,
            product=f"prod_{n}",
            unit_amount=unit_amount,
            currency=currency,
            interval=interval,
            active=active,
        )
        self.prices[lookup_key] = price
        return price

    def set_price_active(self, lookup_key: str, active: bool) -> None:
        self.prices[lookup_key] = replace(self.prices[lookup_key], active=active)

    def fail_next(
        self, operation: str, error: SfBridgeError, *, after_effect: bool = False
    ) -> None:
        self._faults.setdefault(operation, []).append(_Fault(error, after_effect))

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    # internals ----------------------------------------------------------------------------

    def _enter(self, operation: str) -> _Fault | None:
        self.calls[operation] += 1
        queue = self._faults.get(operation)
        fault = queue.pop(0) if queue else None
        if fault is not None and not fault.after_effect:
            raise fault.error
        return fault

    def _idempotent(self, key: str, params: Any, create: Any) -> Any:
        fingerprint = json.dumps(params, sort_keys=True, default=str)
        if key in self._idempotency:
            seen, result = self._idempotency[key]
            if seen != fingerprint:
                raise BillingRejected(
                    "Keys for idempotent requests can only be used with the same parameters."
                )
            return result
        result = create()
        self._idempotency[key] = (fingerprint, result)
        return result

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    # BillingGateway -----------------------------------------------------------------------

    def find_prices(self, lookup_keys: Sequence[str]) -> dict[str, BillingPrice]:
        with self._lock:
            self._enter("find_prices")
            return {k: self.prices[k] for k in lookup_keys if k in self.prices}

    def get_customer(self, customer_id: str) -> BillingCustomer | None:
        with self._lock:
            self._enter("get_customer")
            return self.customers.get(customer_id)

    def find_customer(self, *, customer_key: str) -> BillingCustomer | None:
        with self._lock:
            self._enter("find_customer")
            for customer in self.customers.values():
                if customer.metadata.get("sf_customer_key") == customer_key:
                    return customer
            return None

    def create_customer(self, spec: CustomerSpec, *, idempotency_key: str) -> BillingCustomer:
        with self._lock:
            fault = self._enter("create_customer")

            def create() -> BillingCustomer:
                customer = BillingCustomer(
                    id=self._new_id("cus"),
                    name=spec.name,
                    email=spec.email,
                    metadata=dict(spec.metadata),
                )
                self.customers[customer.id] = customer
                return customer

            params = {"name": spec.name, "email": spec.email, "metadata": dict(spec.metadata)}
            result: BillingCustomer = self._idempotent(idempotency_key, params, create)
            if fault is not None:
                raise fault.error
            return result

    def get_subscription(self, subscription_id: str) -> BillingSubscription | None:
        with self._lock:
            self._enter("get_subscription")
            return self.subscriptions.get(subscription_id)

    def find_subscription(self, *, sf_opportunity_id: str) -> BillingSubscription | None:
        with self._lock:
            self._enter("find_subscription")
            for sub in self.subscriptions.values():
                if sub.metadata.get("sf_opportunity_id") == sf_opportunity_id:
                    return sub
            return None

    def create_subscription(
        self, spec: SubscriptionSpec, *, idempotency_key: str
    ) -> BillingSubscription:
        from sf_bridge.billing.requests import subscription_params

        with self._lock:
            fault = self._enter("create_subscription")
            params = subscription_params(spec)
            if spec.customer not in self.customers:
                raise BillingRejected(f"No such customer: '{spec.customer}'")
            by_id = {p.id: p for p in self.prices.values()}
            for item in spec.items:
                if item.price is not None:
                    price = by_id.get(item.price)
                    if price is None:
                        raise BillingRejected(f"No such price: '{item.price}'")
                    if not price.active:
                        raise BillingRejected(
                            f"The price specified is inactive. This field only accepts active "
                            f"prices. ({item.price})"
                        )

            def create() -> BillingSubscription:
                invoice_id = self._new_id("in")
                charge = spec.collection_method == "charge_automatically"
                sub = BillingSubscription(
                    id=self._new_id("sub"),
                    customer=spec.customer,
                    status="incomplete" if charge else "active",
                    latest_invoice=invoice_id,
                    collection_method=spec.collection_method,
                    metadata=dict(spec.metadata),
                )
                self.invoices[invoice_id] = BillingInvoice(
                    id=invoice_id,
                    status="open" if charge else "draft",
                    hosted_invoice_url=f"https://invoice.example/{invoice_id}" if charge else None,
                    invoice_pdf=f"https://invoice.example/{invoice_id}/pdf" if charge else None,
                    due_date=None,
                    subscription=sub.id,
                    customer=spec.customer,
                )
                self.subscriptions[sub.id] = sub
                self.subscription_params[sub.id] = params
                return sub

            result: BillingSubscription = self._idempotent(idempotency_key, params, create)
            if fault is not None:
                raise fault.error
            return result

    def cancel_subscription(
        self, subscription_id: str, idempotency_key: str
    ) -> BillingSubscription:
        with self._lock:
            self._enter("cancel_subscription")
            sub = replace(self.subscriptions[subscription_id], status="canceled")
            self.subscriptions[subscription_id] = sub
            return sub

    def void_invoice(self, invoice_id: str, *, idempotency_key: str) -> BillingInvoice:
        with self._lock:
            fault = self._enter("void_invoice")

            def void() -> BillingInvoice:
                invoice = self.invoices[invoice_id]
                if invoice.status not in ("open", "uncollectible"):
                    raise BillingRejected(
                        "You can only pass in open or uncollectible invoices. This invoice is "
                        f"{invoice.status}."
                    )
                invoice = replace(invoice, status="void")
                self.invoices[invoice_id] = invoice
                return invoice

            result: BillingInvoice = self._idempotent(idempotency_key, {"void": invoice_id}, void)
            if fault is not None:
                raise fault.error
            return result

    def get_invoice(self, invoice_id: str) -> BillingInvoice:
        with self._lock:
            self._enter("get_invoice")
            if invoice_id not in self.invoices:
                raise BillingRejected(f"No such invoice: '{invoice_id}'")
            return self.invoices[invoice_id]

    def finalize_invoice(self, invoice_id: str, *, idempotency_key: str) -> BillingInvoice:
        with self._lock:
            fault = self._enter("finalize_invoice")

            def finalize() -> BillingInvoice:
                invoice = self.invoices[invoice_id]
                if invoice.status != "draft":
                    raise BillingRejected("This invoice is already finalized.")
                params = self.subscription_params.get(invoice.subscription or "", {})
                days = params.get("days_until_due")
                days = 30 if days is None else int(days)
                invoice = replace(
                    invoice,
                    status="open",
                    hosted_invoice_url=f"https://invoice.example/{invoice_id}",
                    invoice_pdf=f"https://invoice.example/{invoice_id}/pdf",
                    due_date=datetime.now(UTC) + timedelta(days=days),
                )
                self.invoices[invoice_id] = invoice
                return invoice

            result: BillingInvoice = self._idempotent(
                idempotency_key, {"finalize": invoice_id}, finalize
            )
            if fault is not None:
                raise fault.error
            return result

    def send_invoice(self, invoice_id: str, *, idempotency_key: str) -> BillingInvoice:
        with self._lock:
            self._enter("send_invoice")
            return self.invoices[invoice_id]

    def mark_invoice_paid_out_of_band(
        self, invoice_id: str, idempotency_key: str
    ) -> BillingInvoice:
        with self._lock:
            self._enter("mark_invoice_paid_out_of_band")
            invoice = replace(self.invoices[invoice_id], status="paid")
            self.invoices[invoice_id] = invoice
            return invoice

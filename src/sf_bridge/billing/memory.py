"""An in-memory `BillingGateway` for unit tests: Stripe's idempotency semantics, no HTTP.

Faults are scripted: `fail_next(operation, error)` makes the next call of that operation raise
`error` (before or after the change is applied, to imitate a lost response).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sf_bridge.billing.port import (
    BillingCoupon,
    BillingCustomer,
    BillingInvoice,
    BillingPhase,
    BillingPrice,
    BillingSchedule,
    BillingSubscription,
    BillingSubscriptionItem,
    CouponSpec,
    CustomerSpec,
    EndBehavior,
    InvoicePayment,
    InvoicePreview,
    ItemChange,
    PhaseSpec,
    PreviewLine,
    PreviewSpec,
    ProrationBehavior,
    ScheduleSpec,
    SubscriptionItemSpec,
    SubscriptionSpec,
    SubscriptionUpdate,
)
from sf_bridge.billing.proration import prorated
from sf_bridge.errors import BillingRejected, SfBridgeError

MONTH = timedelta(days=30)
PERIODS = {"day": timedelta(days=1), "week": timedelta(days=7), "month": MONTH,
           "year": timedelta(days=365)}  # fmt: skip
MAX_ITEMS = 20


def change_for(item: SubscriptionItemSpec) -> ItemChange:
    return ItemChange(
        quantity=item.quantity,
        price=item.price,
        price_data=item.price_data,
        metadata=dict(item.metadata) or None,
    )


def _amount(item: BillingSubscriptionItem) -> int:
    return (item.unit_amount or 0) * item.quantity


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
    coupons: dict[str, BillingCoupon] = field(default_factory=dict)
    # discount id -> coupon id; subscription id -> its pending proration lines
    discounts: dict[str, str] = field(default_factory=dict)
    pending: dict[str, list[PreviewLine]] = field(default_factory=dict)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    schedules: dict[str, BillingSchedule] = field(default_factory=dict)
    payments: dict[str, list[InvoicePayment]] = field(default_factory=dict)  # by invoice

    def now(self) -> datetime:
        return self.clock()

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

    def find_subscription(
        self, *, sf_opportunity_id: str, customer: str | None = None
    ) -> BillingSubscription | None:
        with self._lock:
            self._enter("find_subscription")
            for sub in self.subscriptions.values():
                if customer and sub.customer != customer:
                    continue
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
                now = self.now()
                items = tuple(self._item(change_for(item), by_id) for item in spec.items)
                sub = BillingSubscription(
                    id=self._new_id("sub"),
                    customer=spec.customer,
                    status="incomplete" if charge else "active",
                    latest_invoice=invoice_id,
                    collection_method=spec.collection_method,
                    metadata=dict(spec.metadata),
                    items=items,
                    current_period_start=now,
                    current_period_end=now + PERIODS.get(items[0].interval or "", MONTH),
                )
                self.invoices[invoice_id] = BillingInvoice(
                    id=invoice_id,
                    status="open" if charge else "draft",
                    hosted_invoice_url=f"https://invoice.example/{invoice_id}" if charge else None,
                    invoice_pdf=f"https://invoice.example/{invoice_id}/pdf" if charge else None,
                    due_date=None,
                    subscription=sub.id,
                    customer=spec.customer,
                    amount_due=sum(_amount(item) for item in items),
                    amount_paid=0,
                    amount_remaining=sum(_amount(item) for item in items),
                    currency=items[0].currency,
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

    def finalize_invoice(
        self, invoice_id: str, *, idempotency_key: str, auto_advance: bool | None = None
    ) -> BillingInvoice:
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
            invoice = self.invoices[invoice_id]
            invoice = replace(
                invoice, status="paid", amount_paid=invoice.amount_due, amount_remaining=0
            )
            self.invoices[invoice_id] = invoice
            return invoice

    # changing a live subscription ---------------------------------------------------------

    def _item(
        self, change: ItemChange, by_id: dict[str, BillingPrice], item_id: str | None = None
    ) -> BillingSubscriptionItem:
        if change.price_data is not None:
            data = change.price_data
            return BillingSubscriptionItem(
                id=item_id or self._new_id("si"),
                price=self._new_id("price"),
                quantity=change.quantity if change.quantity is not None else 1,
                unit_amount=data.unit_amount,
                currency=data.currency,
                interval=data.interval,
                metadata=dict(change.metadata or {}),
                product=data.product,
            )
        price = by_id.get(change.price or "")
        if price is None:
            raise BillingRejected(f"No such price: '{change.price}'")
        if not price.active:
            raise BillingRejected(
                f"The price specified is inactive. This field only accepts active prices. "
                f"({change.price})"
            )
        return BillingSubscriptionItem(
            id=item_id or self._new_id("si"),
            price=price.id,
            quantity=change.quantity if change.quantity is not None else 1,
            unit_amount=price.unit_amount,
            currency=price.currency,
            interval=price.interval,
            lookup_key=price.lookup_key,
            metadata=dict(change.metadata or {}),
            product=price.product,
        )

    def _changed(
        self, sub: BillingSubscription, changes: Sequence[ItemChange]
    ) -> tuple[BillingSubscriptionItem, ...]:
        by_id = {p.id: p for p in self.prices.values()}
        current = {item.id: item for item in sub.items}
        for change in changes:
            if change.item_id is None:
                item = self._item(change, by_id)
                current[item.id] = item
                continue
            old = current.get(change.item_id)
            if old is None:
                raise BillingRejected(f"No such subscription item: '{change.item_id}'")
            if change.deleted:
                del current[change.item_id]
            elif change.price is not None or change.price_data is not None:
                quantity = change.quantity if change.quantity is not None else old.quantity
                merged = {**old.metadata, **(change.metadata or {})}
                current[old.id] = self._item(
                    replace(change, quantity=quantity, metadata=merged), by_id, old.id
                )
            elif change.quantity is not None or change.metadata:
                current[old.id] = replace(
                    old,
                    quantity=old.quantity if change.quantity is None else change.quantity,
                    metadata={**old.metadata, **(change.metadata or {})},
                )
        if not current:
            raise BillingRejected("A subscription must have at least one active plan.")
        if len(current) > MAX_ITEMS:
            raise BillingRejected(
                f"A subscription can have up to {MAX_ITEMS} items, but you've set {len(current)}."
            )
        return tuple(current.values())

    def _prorations(
        self,
        sub: BillingSubscription,
        after: tuple[BillingSubscriptionItem, ...],
        at: datetime,
    ) -> list[PreviewLine]:
        start = int((sub.current_period_start or at).timestamp())
        end = int((sub.current_period_end or at).timestamp())
        moment = int(at.timestamp())
        old = {item.id: item for item in sub.items}
        new = {item.id: item for item in after}
        lines: list[PreviewLine] = []
        for item_id in list(old) + [i for i in new if i not in old]:
            was, now = old.get(item_id), new.get(item_id)
            if was and now and (was.price, was.quantity) == (now.price, now.quantity):
                continue
            for item, sign, what in ((was, -1, "Unused time on"), (now, 1, "Remaining time on")):
                if item is None:
                    continue
                amount = sign * prorated(_amount(item), start, end, moment)
                if amount:
                    lines.append(
                        PreviewLine(
                            description=f"{what} {item.quantity} x {item.price}",
                            amount=amount,
                            proration=True,
                            price=item.price,
                            quantity=item.quantity,
                            period_start=at,
                            period_end=sub.current_period_end,
                        )
                    )
        return lines

    def _discounted(self, discount_ids: Sequence[str], subtotal: int) -> int:
        left = subtotal
        for discount_id in discount_ids:
            coupon = self.coupons[self.discounts[discount_id]]
            if coupon.percent_off is not None:
                left -= round(left * coupon.percent_off / 100)
            else:
                left -= min(coupon.amount_off or 0, left)
        return subtotal - left

    def update_subscription(
        self, subscription_id: str, spec: SubscriptionUpdate, *, idempotency_key: str
    ) -> BillingSubscription:
        from sf_bridge.billing.requests import update_params

        with self._lock:
            fault = self._enter("update_subscription")
            params = {"id": subscription_id, **update_params(spec)}

            def update() -> BillingSubscription:
                sub = self.subscriptions.get(subscription_id)
                if sub is None:
                    raise BillingRejected(f"No such subscription: '{subscription_id}'")
                items = self._changed(sub, spec.items) if spec.items else sub.items
                at = spec.proration_date or self.now()
                lines = (
                    [] if spec.proration_behavior == "none" else self._prorations(sub, items, at)
                )
                changes: dict[str, Any] = {"items": items}
                if spec.coupons is not None:
                    ids = []
                    for coupon in spec.coupons:
                        if coupon not in self.coupons:
                            raise BillingRejected(f"No such coupon: '{coupon}'")
                        discount_id = self._new_id("di")
                        self.discounts[discount_id] = coupon
                        ids.append(discount_id)
                    changes["discounts"] = tuple(ids)
                if spec.metadata is not None:
                    merged = {**sub.metadata, **spec.metadata}
                    changes["metadata"] = {k: v for k, v in merged.items() if v != ""}
                if spec.proration_behavior == "always_invoice" and lines:
                    invoice_id = self._new_id("in")
                    total = sum(line.amount for line in lines)
                    charge = sub.collection_method == "charge_automatically"
                    self.invoices[invoice_id] = BillingInvoice(
                        id=invoice_id,
                        status="open" if charge else "draft",
                        hosted_invoice_url=None,
                        invoice_pdf=None,
                        due_date=None,
                        subscription=sub.id,
                        customer=sub.customer,
                        amount_due=max(0, total),
                        amount_paid=0,
                        amount_remaining=max(0, total),
                        currency=items[0].currency,
                    )
                    changes["latest_invoice"] = invoice_id
                else:
                    self.pending.setdefault(sub.id, []).extend(lines)
                updated = replace(sub, **changes)
                self.subscriptions[sub.id] = updated
                return updated

            result: BillingSubscription = self._idempotent(idempotency_key, params, update)
            if fault is not None:
                raise fault.error
            return result

    def create_coupon(self, spec: CouponSpec, *, idempotency_key: str) -> BillingCoupon:
        from sf_bridge.billing.requests import coupon_params

        with self._lock:
            fault = self._enter("create_coupon")
            coupon_params(spec)  # refuses what Stripe would
            coupon = self.coupons.get(spec.id)
            if coupon is None:
                coupon = BillingCoupon(
                    id=spec.id,
                    duration=spec.duration,
                    percent_off=spec.percent_off,
                    amount_off=spec.amount_off,
                    currency=spec.currency,
                    duration_in_months=spec.duration_in_months,
                )
                self.coupons[spec.id] = coupon
            if fault is not None:
                raise fault.error
            return coupon

    def preview_invoice(self, spec: PreviewSpec) -> InvoicePreview:
        from sf_bridge.billing.requests import preview_params

        with self._lock:
            self._enter("preview_invoice")
            preview_params(spec)
            if spec.schedule is not None:
                schedule = self.schedules.get(spec.schedule)
                if schedule is None:
                    raise BillingRejected(f"No such subscription schedule: '{spec.schedule}'")
                if schedule.subscription is not None:
                    return self.preview_invoice(PreviewSpec(subscription=schedule.subscription))
                first = [ItemChange(price=p, quantity=q) for p, q in schedule.phases[0].items]
                return self.preview_invoice(PreviewSpec(customer=schedule.customer, items=first))
            if spec.subscription is None:
                by_id = {p.id: p for p in self.prices.values()}
                items = tuple(self._item(change, by_id) for change in spec.items)
                lines = [self._full_line(item, None) for item in items]
                return self._preview(lines, items[0].currency, ())
            sub = self.subscriptions.get(spec.subscription)
            if sub is None:
                raise BillingRejected(f"No such subscription: '{spec.subscription}'")
            items = self._changed(sub, spec.items) if spec.items else sub.items
            at = spec.proration_date or self.now()
            prorations = (
                [] if spec.proration_behavior == "none" else self._prorations(sub, items, at)
            )
            if spec.proration_behavior == "always_invoice":
                return self._preview(prorations, items[0].currency, sub.discounts)
            lines = list(self.pending.get(sub.id, [])) + prorations
            lines += [self._full_line(item, sub) for item in items]
            return self._preview(lines, items[0].currency, sub.discounts)

    def _full_line(
        self, item: BillingSubscriptionItem, sub: BillingSubscription | None
    ) -> PreviewLine:
        return PreviewLine(
            description=f"{item.quantity} x {item.price}",
            amount=_amount(item),
            proration=False,
            price=item.price,
            quantity=item.quantity,
            period_start=sub.current_period_end if sub else None,
        )

    def _preview(
        self, lines: list[PreviewLine], currency: str, discount_ids: Sequence[str]
    ) -> InvoicePreview:
        subtotal = sum(line.amount for line in lines)
        discount = self._discounted(discount_ids, subtotal) if subtotal > 0 else 0
        return InvoicePreview(
            currency=currency,
            lines=tuple(lines),
            subtotal=subtotal,
            total_discount=discount,
            total=subtotal - discount,
            amount_due=max(0, subtotal - discount),
        )

    def record_payment(
        self,
        invoice_id: str,
        amount: int,
        *,
        idempotency_key: str,
        reference: str,
        initiated_at: int,
    ) -> BillingInvoice:
        with self._lock:
            fault = self._enter("record_payment")

            def pay() -> BillingInvoice:
                invoice = self.invoices.get(invoice_id)
                if invoice is None:
                    raise BillingRejected(f"No such invoice: '{invoice_id}'")
                if invoice.status != "open":
                    raise BillingRejected(
                        f"You can only attach a payment to an open invoice. This invoice is "
                        f"{invoice.status}."
                    )
                due = invoice.amount_due or 0
                remaining = (
                    invoice.amount_remaining if invoice.amount_remaining is not None else due
                )
                if amount <= 0 or amount > remaining:
                    raise BillingRejected(
                        f"The payment amount ({amount}) exceeds the invoice's amount remaining "
                        f"({remaining})."
                    )
                left = remaining - amount
                invoice = replace(
                    invoice,
                    amount_paid=(invoice.amount_paid or 0) + amount,
                    amount_remaining=left,
                    status="paid" if left == 0 else "open",
                )
                self.invoices[invoice_id] = invoice
                made = self.payments.setdefault(invoice_id, [])
                record = self._new_id("pr")
                made.insert(
                    0,
                    InvoicePayment(
                        id=f"inpay_{record}",
                        invoice=invoice_id,
                        payment_record=record,
                        amount=amount,
                        currency=invoice.currency or "usd",
                        status="paid",
                        reference=reference,
                    ),
                )
                return invoice

            params = {
                "invoice": invoice_id,
                "amount": amount,
                "reference": reference,
                "initiated_at": initiated_at,
            }
            result: BillingInvoice = self._idempotent(idempotency_key, params, pay)
            if fault is not None:
                raise fault.error
            return result

    def invoice_payments(self, invoice_id: str) -> list[InvoicePayment]:
        with self._lock:
            self._enter("invoice_payments")
            return list(self.payments.get(invoice_id, []))

    # subscription schedules (phases do not advance here; the emulator runs them on its clock)

    def _phases(self, phases: Sequence[PhaseSpec], start: datetime) -> tuple[BillingPhase, ...]:
        made: list[BillingPhase] = []
        for index, phase in enumerate(phases):
            if phase.end_date is not None:
                end: datetime | None = phase.end_date
            elif phase.months is not None:
                end = start + phase.months * MONTH
            elif index == len(phases) - 1:
                end = start + MONTH
            else:
                raise BillingRejected("Every phase but the last needs an end_date or a duration.")
            items = tuple((item.price or "price_data", item.quantity) for item in phase.items)
            made.append(
                BillingPhase(
                    start,
                    end,
                    items,
                    tuple(phase.coupons),
                    metadata=dict(phase.metadata),
                    item_metadata=tuple(dict(item.metadata) for item in phase.items),
                )
            )
            start = end or start
        return tuple(made)

    def create_schedule(self, spec: ScheduleSpec, *, idempotency_key: str) -> BillingSchedule:
        from sf_bridge.billing.requests import schedule_params

        with self._lock:
            fault = self._enter("create_schedule")
            params = schedule_params(spec)
            if spec.customer not in self.customers:
                raise BillingRejected(f"No such customer: '{spec.customer}'")

            def create() -> BillingSchedule:
                now = self.now()
                start = spec.start_date or now
                phases = self._phases(spec.phases, start)
                schedule = BillingSchedule(
                    id=self._new_id("sub_sched"),
                    customer=spec.customer,
                    status="not_started",
                    subscription=None,
                    end_behavior=spec.end_behavior,
                    phases=phases,
                    metadata=dict(spec.metadata),
                )
                if start <= now:
                    first = spec.phases[0]
                    sub = self.create_subscription(
                        SubscriptionSpec(
                            customer=spec.customer,
                            items=first.items,
                            metadata=dict(first.metadata),
                            collection_method=first.collection_method or spec.collection_method,
                            days_until_due=first.days_until_due or spec.days_until_due,
                        ),
                        idempotency_key=f"{idempotency_key}:subscription",
                    )
                    schedule = replace(
                        schedule,
                        status="active",
                        subscription=sub.id,
                        current_phase_start=phases[0].start_date,
                        current_phase_end=phases[0].end_date,
                    )
                self.schedules[schedule.id] = schedule
                return schedule

            result: BillingSchedule = self._idempotent(idempotency_key, params, create)
            if fault is not None:
                raise fault.error
            return result

    def schedule_subscription(
        self, subscription_id: str, *, idempotency_key: str
    ) -> BillingSchedule:
        with self._lock:
            self._enter("schedule_subscription")

            def create() -> BillingSchedule:
                sub = self.subscriptions.get(subscription_id)
                if sub is None:
                    raise BillingRejected(f"No such subscription: '{subscription_id}'")
                if any(s.subscription == sub.id for s in self.schedules.values()):
                    raise BillingRejected("The subscription is already attached to a schedule.")
                phase = BillingPhase(
                    sub.current_period_start,
                    sub.current_period_end,
                    tuple((item.price, item.quantity) for item in sub.items),
                )
                schedule = BillingSchedule(
                    id=self._new_id("sub_sched"),
                    customer=sub.customer,
                    status="active",
                    subscription=sub.id,
                    end_behavior="release",
                    phases=(phase,),
                    current_phase_start=phase.start_date,
                    current_phase_end=phase.end_date,
                )
                self.schedules[schedule.id] = schedule
                self.subscriptions[sub.id] = replace(sub, schedule=schedule.id)
                return schedule

            result: BillingSchedule = self._idempotent(
                idempotency_key, {"from_subscription": subscription_id}, create
            )
            return result

    def get_schedule(self, schedule_id: str) -> BillingSchedule | None:
        with self._lock:
            self._enter("get_schedule")
            return self.schedules.get(schedule_id)

    def find_schedule(
        self, *, sf_opportunity_id: str, customer: str | None = None
    ) -> BillingSchedule | None:
        with self._lock:
            self._enter("find_schedule")
            for schedule in reversed(list(self.schedules.values())):
                if customer and schedule.customer != customer:
                    continue
                if schedule.metadata.get("sf_opportunity_id") == sf_opportunity_id:
                    return schedule
            return None

    def _live_schedule(self, schedule_id: str, action: str) -> BillingSchedule:
        schedule = self.schedules.get(schedule_id)
        if schedule is None:
            raise BillingRejected(f"No such subscription schedule: '{schedule_id}'")
        if schedule.status not in ("not_started", "active"):
            raise BillingRejected(
                f"You cannot {action} a subscription schedule that is currently {schedule.status}."
            )
        return schedule

    def update_schedule(
        self,
        schedule_id: str,
        phases: Sequence[PhaseSpec],
        *,
        idempotency_key: str,
        end_behavior: EndBehavior | None = None,
        metadata: Mapping[str, str] | None = None,
        proration_behavior: ProrationBehavior | None = None,
    ) -> BillingSchedule:
        with self._lock:
            self._enter("update_schedule")

            def update() -> BillingSchedule:
                schedule = self._live_schedule(schedule_id, "update")
                start = schedule.current_phase_start or schedule.phases[0].start_date
                made = self._phases(phases, start or self.now())
                schedule = replace(
                    schedule,
                    phases=made,
                    end_behavior=end_behavior or schedule.end_behavior,
                    metadata={**schedule.metadata, **(metadata or {})},
                    current_phase_end=made[0].end_date
                    if schedule.status == "active"
                    else schedule.current_phase_end,
                )
                self.schedules[schedule_id] = schedule
                if schedule.status == "active" and phases:
                    self._apply_current_phase(schedule, phases[0])
                return schedule

            params = {
                "id": schedule_id,
                "phases": [str(p) for p in phases],
                "end": end_behavior,
                "metadata": dict(metadata or {}),
            }
            result: BillingSchedule = self._idempotent(idempotency_key, params, update)
            return result

    def _apply_current_phase(self, schedule: BillingSchedule, phase: PhaseSpec) -> None:
        """A change of the current phase's items changes the subscription now (as Stripe
        does; no prorations are kept here)."""
        sub = self.subscriptions.get(schedule.subscription or "")
        if sub is None:
            return
        wanted = list(phase.items)
        changes: list[ItemChange] = []
        for item in sub.items:
            same = next((w for w in wanted if w.price == item.price), None)
            if same is None:
                changes.append(ItemChange(item_id=item.id, deleted=True))
                continue
            wanted.remove(same)
            if same.quantity != item.quantity:
                changes.append(ItemChange(item_id=item.id, quantity=same.quantity))
        changes += [change_for(w) for w in wanted]
        if changes:
            self.subscriptions[sub.id] = replace(sub, items=self._changed(sub, changes))

    def release_schedule(self, schedule_id: str, *, idempotency_key: str) -> BillingSchedule:
        with self._lock:
            self._enter("release_schedule")

            def release() -> BillingSchedule:
                schedule = self._live_schedule(schedule_id, "release")
                schedule = replace(
                    schedule,
                    status="released",
                    released_subscription=schedule.subscription,
                    subscription=None,
                    current_phase_start=None,
                    current_phase_end=None,
                )
                self.schedules[schedule_id] = schedule
                return schedule

            result: BillingSchedule = self._idempotent(
                idempotency_key, {"release": schedule_id}, release
            )
            return result

    def cancel_schedule(
        self,
        schedule_id: str,
        *,
        idempotency_key: str,
        invoice_now: bool | None = None,
        prorate: bool | None = None,
    ) -> BillingSchedule:
        with self._lock:
            self._enter("cancel_schedule")

            def cancel() -> BillingSchedule:
                schedule = self._live_schedule(schedule_id, "cancel")
                if schedule.subscription in self.subscriptions:
                    sub = self.subscriptions[schedule.subscription]
                    self.subscriptions[sub.id] = replace(sub, status="canceled")
                schedule = replace(
                    schedule, status="canceled", current_phase_start=None, current_phase_end=None
                )
                self.schedules[schedule_id] = schedule
                return schedule

            result: BillingSchedule = self._idempotent(
                idempotency_key, {"cancel": schedule_id}, cancel
            )
            return result

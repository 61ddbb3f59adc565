"""Stripe billing as the rest of sf-bridge sees it. The domain never imports `stripe`; it talks
to a `BillingGateway` and gets plain dataclasses back.

Implementations: `sf_bridge.billing.stripe_gateway.StripeGateway` (Stripe or the sandbox
emulator over HTTP) and `sf_bridge.billing.memory.InMemoryBilling` for pure unit tests.

Every call that changes something takes an `idempotency_key`; errors are raised as
`sf_bridge.errors` types (`TransientError`, `RateLimitedError`, `BillingRejected`) carrying
`stripe_request_id` when Stripe gave one. Every result carries the `request_id` of the request
that produced it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

# How long one request to Stripe may take before the client gives up on it (the gateway's
# HTTP timeout). A request may still be carried out by Stripe until then: whoever waits for a
# request that may be in flight waits at least this long.
REQUEST_TIMEOUT_SECONDS = 20.0

CollectionMethod = Literal["send_invoice", "charge_automatically"]
# What Stripe does with the price difference when items change mid-period: invoice items
# waiting for the next invoice (the default), an invoice now, or nothing.
ProrationBehavior = Literal["create_prorations", "always_invoice", "none"]
CouponDuration = Literal["once", "repeating", "forever"]


@dataclass(frozen=True)
class BillingPrice:
    id: str
    lookup_key: str | None
    product: str
    unit_amount: int | None
    currency: str
    interval: str | None
    active: bool
    request_id: str | None = None


@dataclass(frozen=True)
class BillingCustomer:
    id: str
    name: str | None
    email: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None


@dataclass(frozen=True)
class PriceData:
    """An inline price used only by one subscription item (a negotiated amount)."""

    product: str
    unit_amount: int
    currency: str
    interval: str
    interval_count: int = 1


@dataclass(frozen=True)
class SubscriptionItemSpec:
    """Exactly one of `price` (a catalog Price id) or `price_data`. `metadata` tags the item
    with the plan line it is (`sf_line`), so a later change finds it whatever its price."""

    quantity: int
    price: str | None = None
    price_data: PriceData | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CustomerSpec:
    name: str
    email: str | None
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class SubscriptionSpec:
    customer: str
    items: Sequence[SubscriptionItemSpec]
    metadata: Mapping[str, str]
    collection_method: CollectionMethod
    days_until_due: int | None = None
    # charge_automatically: "default_incomplete" leaves the first invoice open with its
    # hosted payment page when the customer has no payment method yet.
    payment_behavior: str | None = None
    # deal-level discounts: coupons applied as `discounts[][coupon]`
    coupons: Sequence[str] = ()
    # a contract that started earlier, billed from its start (`backdate_start_date`)
    backdate_start_date: datetime | None = None


@dataclass(frozen=True)
class BillingSubscriptionItem:
    """One item of a subscription as Stripe holds it, so a caller can compute a change."""

    id: str
    price: str
    quantity: int
    unit_amount: int | None
    currency: str
    interval: str | None = None
    lookup_key: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    product: str | None = None


@dataclass(frozen=True)
class BillingSubscription:
    id: str
    customer: str
    status: str
    latest_invoice: str | None
    collection_method: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None
    items: tuple[BillingSubscriptionItem, ...] = ()
    discounts: tuple[str, ...] = ()  # discount ids (di_...)
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    schedule: str | None = None  # the subscription schedule managing it, if any


@dataclass(frozen=True)
class ItemChange:
    """One change to a subscription's items: an existing item (`item_id`) with a new
    `quantity` and/or price, an existing item `deleted`, or a new item (no `item_id`) with
    exactly one of `price` or `price_data`."""

    item_id: str | None = None
    quantity: int | None = None
    price: str | None = None
    price_data: PriceData | None = None
    deleted: bool = False
    metadata: Mapping[str, str] | None = None  # merged into the item's (new items: its own)


@dataclass(frozen=True)
class SubscriptionUpdate:
    """A change to a live subscription. `coupons`: None leaves its discounts as they are, a
    sequence replaces them (empty: none). `metadata` keys are merged ('' removes one)."""

    items: Sequence[ItemChange] = ()
    proration_behavior: ProrationBehavior = "create_prorations"
    proration_date: datetime | None = None
    coupons: Sequence[str] | None = None
    metadata: Mapping[str, str] | None = None


@dataclass(frozen=True)
class CouponSpec:
    """A coupon: `percent_off`, or `amount_off` (minor units) with `currency`. Its `id` is
    derived from the deal so a retry finds it again instead of making a second one."""

    id: str
    duration: CouponDuration
    percent_off: float | None = None
    amount_off: int | None = None
    currency: str | None = None
    duration_in_months: int | None = None
    name: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BillingCoupon:
    id: str
    duration: str
    percent_off: float | None
    amount_off: int | None
    currency: str | None
    duration_in_months: int | None
    valid: bool = True
    request_id: str | None = None


@dataclass(frozen=True)
class PreviewSpec:
    """The invoice a change would produce: of `subscription` changed by `items` (with its
    proration behaviour), the first invoice of a new subscription of `customer`, or the next
    invoice of `schedule` (its first when it has not started; a renewal that starts a new
    phase bills that phase)."""

    subscription: str | None = None
    schedule: str | None = None
    customer: str | None = None
    items: Sequence[ItemChange] = ()
    proration_behavior: ProrationBehavior = "create_prorations"
    proration_date: datetime | None = None


@dataclass(frozen=True)
class PreviewLine:
    description: str | None
    amount: int
    proration: bool
    price: str | None = None
    quantity: int | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None


@dataclass(frozen=True)
class InvoicePreview:
    """A preview: nothing was created in Stripe."""

    currency: str
    lines: tuple[PreviewLine, ...]
    subtotal: int
    total_discount: int
    total: int
    amount_due: int
    request_id: str | None = None

    @property
    def proration_lines(self) -> tuple[PreviewLine, ...]:
        return tuple(line for line in self.lines if line.proration)


@dataclass(frozen=True)
class BillingInvoice:
    id: str
    status: str  # draft | open | paid | void | uncollectible
    hosted_invoice_url: str | None
    invoice_pdf: str | None
    due_date: datetime | None
    subscription: str | None = None
    customer: str | None = None
    amount_due: int | None = None
    currency: str | None = None
    request_id: str | None = None
    amount_paid: int | None = None
    amount_remaining: int | None = None


@dataclass(frozen=True)
class InvoicePayment:
    """A payment made outside Stripe attached to an invoice (an `invoice_payment` of type
    `payment_record`): what identifies it is its `reference`, the record's
    `processor_details.custom.payment_reference`, and its amount."""

    id: str
    invoice: str
    payment_record: str
    amount: int  # minor units, `amount_paid` (what was requested while it is not paid)
    currency: str
    status: str  # open | paid | canceled
    reference: str | None


EndBehavior = Literal["release", "cancel"]


@dataclass(frozen=True)
class PhaseSpec:
    """One phase of a schedule (a ramp step): its items, how long it lasts (`end_date`, or
    `months`; the last may have neither: one billing interval), its coupons and the metadata
    its subscription carries while it runs."""

    items: Sequence[SubscriptionItemSpec]
    end_date: datetime | None = None
    months: int | None = None
    coupons: Sequence[str] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    collection_method: CollectionMethod | None = None
    days_until_due: int | None = None


@dataclass(frozen=True)
class ScheduleSpec:
    """A subscription that starts at `start_date` (None: now) and changes phase by phase.
    `metadata` tags the schedule itself (`sf_opportunity_id`, so it is found again)."""

    customer: str
    phases: Sequence[PhaseSpec]
    metadata: Mapping[str, str]
    start_date: datetime | None = None
    end_behavior: EndBehavior = "release"
    collection_method: CollectionMethod = "send_invoice"
    days_until_due: int | None = 30


@dataclass(frozen=True)
class BillingPhase:
    start_date: datetime | None
    end_date: datetime | None
    items: tuple[tuple[str, int], ...]  # (price id, quantity)
    coupons: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    item_metadata: tuple[Mapping[str, str], ...] = ()  # one per item, in order


@dataclass(frozen=True)
class BillingSchedule:
    id: str
    customer: str
    status: str  # not_started | active | completed | released | canceled
    subscription: str | None
    end_behavior: str
    phases: tuple[BillingPhase, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    current_phase_start: datetime | None = None
    current_phase_end: datetime | None = None
    released_subscription: str | None = None
    request_id: str | None = None


class BillingGateway(Protocol):
    def find_prices(self, lookup_keys: Sequence[str]) -> dict[str, BillingPrice]:
        """Prices (active or archived) by lookup key; keys with no price are absent."""
        ...

    def find_customer(self, *, customer_key: str) -> BillingCustomer | None:
        """The customer tagged `metadata.sf_customer_key` (search; eventually consistent)."""
        ...

    def create_customer(self, spec: CustomerSpec, *, idempotency_key: str) -> BillingCustomer: ...

    def get_subscription(self, subscription_id: str) -> BillingSubscription | None: ...

    def find_subscription(
        self, *, sf_opportunity_id: str, customer: str | None = None
    ) -> BillingSubscription | None:
        """The subscription tagged `metadata.sf_opportunity_id`: among the `customer`'s
        subscriptions of every status when the customer is known (a list, current), else by
        search (eventually consistent: a subscription just created may not be found)."""
        ...

    def create_subscription(
        self, spec: SubscriptionSpec, *, idempotency_key: str
    ) -> BillingSubscription: ...

    def get_invoice(self, invoice_id: str) -> BillingInvoice: ...

    def finalize_invoice(
        self, invoice_id: str, *, idempotency_key: str, auto_advance: bool | None = None
    ) -> BillingInvoice: ...

    def send_invoice(self, invoice_id: str, *, idempotency_key: str) -> BillingInvoice: ...

    def mark_invoice_paid_out_of_band(
        self, invoice_id: str, idempotency_key: str
    ) -> BillingInvoice: ...

    def cancel_subscription(
        self, subscription_id: str, idempotency_key: str
    ) -> BillingSubscription: ...

    def update_subscription(
        self, subscription_id: str, spec: SubscriptionUpdate, *, idempotency_key: str
    ) -> BillingSubscription:
        """Changes items, discounts or metadata of a live subscription:
        `POST /v1/subscriptions/{id}` with `items[]` (`id` + `quantity`/`price`/`price_data`,
        `id` + `deleted`, or a new `price`/`price_data`), `proration_behavior`,
        `proration_date`, `discounts[][coupon]` and `metadata`."""
        ...

    def create_schedule(self, spec: ScheduleSpec, *, idempotency_key: str) -> BillingSchedule:
        """`POST /v1/subscription_schedules` (`customer`, `start_date` now or a timestamp,
        `end_behavior`, `default_settings` collection, `metadata`, `phases[]` with `items`,
        `end_date` or `duration`, `discounts[][coupon]`, `metadata`)."""
        ...

    def schedule_subscription(
        self, subscription_id: str, *, idempotency_key: str
    ) -> BillingSchedule:
        """Puts a live subscription under a schedule (`POST /v1/subscription_schedules` with
        `from_subscription`), to change it later with `update_schedule`."""
        ...

    def get_schedule(self, schedule_id: str) -> BillingSchedule | None:
        """`GET /v1/subscription_schedules/{id}`; None when it does not exist."""
        ...

    def find_schedule(
        self, *, sf_opportunity_id: str, customer: str | None = None
    ) -> BillingSchedule | None:
        """The schedule tagged `metadata.sf_opportunity_id`. Stripe has no search for
        schedules: this lists them (`GET /v1/subscription_schedules`, by `customer` when
        given, 100 a page) and filters by the tag. Keep the schedule id once known."""
        ...

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
        """Replaces the phases from the current one on (`POST /v1/subscription_schedules/
        {id}` with `phases[]`; the first keeps the current phase's `start_date`), with the
        schedule's `metadata` merged in the same request. `proration_behavior`: how a change
        of the current phase's items is prorated (Stripe's default `create_prorations`)."""
        ...

    def release_schedule(self, schedule_id: str, *, idempotency_key: str) -> BillingSchedule:
        """`POST /v1/subscription_schedules/{id}/release`: the subscription goes on alone."""
        ...

    def cancel_schedule(
        self,
        schedule_id: str,
        *,
        idempotency_key: str,
        invoice_now: bool | None = None,
        prorate: bool | None = None,
    ) -> BillingSchedule:
        """`POST /v1/subscription_schedules/{id}/cancel`: the schedule and its subscription end
        now ("only if its status is `not_started` or `active`"). `invoice_now` / `prorate`
        (Stripe's defaults: true) apply when the schedule is active: a final invoice of the
        pending prorations, a prorated cancellation; None sends Stripe's default."""
        ...

    def create_coupon(self, spec: CouponSpec, *, idempotency_key: str) -> BillingCoupon:
        """`POST /v1/coupons` with the spec's own `id`; when a coupon of that id exists
        already (a retry), `GET /v1/coupons/{id}` returns it instead."""
        ...

    def preview_invoice(self, spec: PreviewSpec) -> InvoicePreview:
        """`POST /v1/invoices/create_preview` (`subscription` with `subscription_details`
        `items`/`proration_behavior`/`proration_date`, `customer` with
        `subscription_details.items`, or `schedule`): creates nothing."""
        ...

    def record_payment(
        self,
        invoice_id: str,
        amount: int,
        *,
        idempotency_key: str,
        reference: str,
        initiated_at: int,
    ) -> BillingInvoice:
        """A payment of `amount` (minor units of the invoice's currency) made outside Stripe:
        `POST /v1/payment_records/report_payment` (outcome `guaranteed`, a custom payment
        method "Wire transfer", `reference` as `processor_details.custom.payment_reference`,
        initiated and guaranteed at `initiated_at`, Unix seconds) then `POST
        /v1/invoices/{id}/attach_payment` with its `payment_record`. The invoice is `paid` once
        its `amount_remaining` is 0. Every parameter is the caller's, so a retry under the same
        `idempotency_key` sends the same request (Stripe refuses a key reused with others)."""
        ...

    def invoice_payments(self, invoice_id: str) -> list[InvoicePayment]:
        """The payments made outside Stripe attached to the invoice (`GET /v1/invoice_payments`
        with `invoice` and `payment[type]=payment_record`, records expanded), newest first."""
        ...

    def void_invoice(self, invoice_id: str, *, idempotency_key: str) -> BillingInvoice:
        """Voids an open (or uncollectible) invoice: nothing is owed on it any more."""
        ...


@dataclass(frozen=True)
class StripeItem:
    """One subscription item as Stripe holds it now."""

    quantity: int
    unit_amount: int | None
    currency: str
    interval: str | None
    price: str
    lookup_key: str | None = None


@dataclass(frozen=True)
class StripeRecord:
    """A customer, subscription or invoice as read for a reconciliation (read-only)."""

    kind: Literal["customer", "subscription", "invoice"]
    id: str
    created: datetime | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    status: str | None = None  # subscriptions and invoices
    customer: str | None = None
    subscription: str | None = None  # invoices
    items: tuple[StripeItem, ...] = ()  # subscriptions
    amount_due: int | None = None  # invoices
    currency: str | None = None
    deleted: bool = False

    @property
    def opportunity_id(self) -> str | None:
        return self.metadata.get("sf_opportunity_id") or None

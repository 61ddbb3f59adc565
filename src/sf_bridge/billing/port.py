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

CollectionMethod = Literal["send_invoice", "charge_automatically"]


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
    """Exactly one of `price` (a catalog Price id) or `price_data`."""

    quantity: int
    price: str | None = None
    price_data: PriceData | None = None


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


@dataclass(frozen=True)
class BillingSubscription:
    id: str
    customer: str
    status: str
    latest_invoice: str | None
    collection_method: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None


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


class BillingGateway(Protocol):
    def find_prices(self, lookup_keys: Sequence[str]) -> dict[str, BillingPrice]:
        """Prices (active or archived) by lookup key; keys with no price are absent."""
        ...

    def get_customer(self, customer_id: str) -> BillingCustomer | None:
        """The customer, or None when it does not exist or was deleted."""
        ...

    def find_customer(self, *, customer_key: str) -> BillingCustomer | None:
        """The customer tagged `metadata.sf_customer_key` (search; eventually consistent)."""
        ...

    def create_customer(self, spec: CustomerSpec, *, idempotency_key: str) -> BillingCustomer: ...

    def get_subscription(self, subscription_id: str) -> BillingSubscription | None: ...

    def find_subscription(self, *, sf_opportunity_id: str) -> BillingSubscription | None:
        """The subscription tagged `metadata.sf_opportunity_id` (search; eventually consistent)."""
        ...

    def create_subscription(
        self, spec: SubscriptionSpec, *, idempotency_key: str
    ) -> BillingSubscription: ...

    def get_invoice(self, invoice_id: str) -> BillingInvoice: ...

    def finalize_invoice(self, invoice_id: str, *, idempotency_key: str) -> BillingInvoice: ...

    def send_invoice(self, invoice_id: str, *, idempotency_key: str) -> BillingInvoice: ...

    def mark_invoice_paid_out_of_band(
        self, invoice_id: str, idempotency_key: str
    ) -> BillingInvoice: ...

    def cancel_subscription(
        self, subscription_id: str, idempotency_key: str
    ) -> BillingSubscription: ...

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

"""What a deal sends to Stripe, computed once from its plan.

`customer_spec` and `subscription_spec` turn a `ProvisioningPlan` (and the catalog prices its
items name, resolved by lookup key) into the exact content of the Stripe requests. The
provisioning steps send what they return, and `sf-bridge mappings preview` shows it, so the
preview and what Stripe receives cannot disagree. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from sf_bridge.billing.port import (
    BillingPrice,
    CouponSpec,
    CustomerSpec,
    PriceData,
    ScheduleSpec,
    SubscriptionItemSpec,
    SubscriptionSpec,
)
from sf_bridge.errors import BillingRejected, PermanentError, SfBridgeError
from sf_bridge.mapping.model import Mappings
from sf_bridge.plan import ProvisioningPlan
from sf_bridge.provisioning import schedule as contract

# Days to pay when a plan carries no payment terms (plans stored before terms were recorded).
DEFAULT_DAYS_UNTIL_DUE = 30


# The subscription item's metadata key naming the plan line it bills (the catalog price's
# lookup key): a negotiated price (`price_data`) has no lookup key of its own, so a later
# amendment finds the item by this tag.
LINE_KEY = "sf_line"


def line_metadata(lookup_key: str) -> dict[str, str]:
    return {LINE_KEY: lookup_key}


def price_lookup_keys(plan: ProvisioningPlan) -> list[str]:
    """The catalog prices the plan's items (and its ramp phases' items) name, in item order,
    each once."""
    items = [*plan.items, *(i for phase in plan.phases for i in phase.items)]
    return list(dict.fromkeys(i.lookup_key for i in items if i.lookup_key))


def customer_spec(
    *, name: str, email: str | None, account_id: str, customer_key: str
) -> CustomerSpec:
    """The Stripe customer of one customer key (created by the first deal with that key).

    Built from the customer's identity alone (not from the deal), so every deal with the key
    sends the same request under the same Idempotency-Key, whichever account it comes from."""
    return CustomerSpec(
        name=name or account_id,
        email=email,
        metadata={"sf_account_id": account_id, "sf_customer_key": customer_key},
    )


def plan_customer_spec(plan: ProvisioningPlan) -> CustomerSpec:
    """`customer_spec` of the customer a plan's first deal would create."""
    return customer_spec(
        name=plan.customer.name,
        email=plan.customer.email,
        account_id=plan.customer.account_id,
        customer_key=plan.customer.customer_key,
    )


def subscription_spec(
    plan: ProvisioningPlan,
    prices: Mapping[str, BillingPrice],
    *,
    customer: str,
    opportunity_id: str,
) -> SubscriptionSpec:
    """The subscription of a paid plan: one item per plan item, at the catalog price (by its
    Stripe id) or, when negotiated, an inline `price_data` on the catalog price's product.

    `prices` are the catalog prices by lookup key. A missing or archived price is refused with
    `BillingRejected` saying what to fix, as Stripe would refuse the subscription.
    """
    terms = plan.billing
    if terms is None:
        raise PermanentError(
            f"Plan {plan.plan_name!r} is paid but has no billing terms.",
            hint="give the plan a collection method and interval in the mappings, then replay.",
        )
    items: list[SubscriptionItemSpec] = []
    for item in plan.items:
        if not item.lookup_key:
            raise PermanentError(
                f"Item {item.name!r} ({item.product_code}) has no Stripe price lookup key.",
                hint="give it a `lookup_key` in the mappings catalog, then replay the deal.",
            )
        price = prices.get(item.lookup_key)
        if price is None:
            raise BillingRejected(
                f"No Stripe price has the lookup key {item.lookup_key!r} (item {item.name!r}).",
                hint="create the price in Stripe with that lookup key, or correct the key in "
                "the mappings, then `sf-bridge replay` the deal.",
            )
        if not price.active:
            raise BillingRejected(
                f"The Stripe price {price.id} (lookup key {item.lookup_key!r}, item "
                f"{item.name!r}) is archived (inactive); Stripe refuses subscriptions to it.",
                hint="re-activate the price in Stripe, or point the mapping at an active "
                "price, then `sf-bridge replay` the deal.",
            )
        if item.has_override and item.unit_amount is not None:
            items.append(
                SubscriptionItemSpec(
                    quantity=item.quantity,
                    price_data=PriceData(
                        product=price.product or item.stripe_product or "",
                        unit_amount=item.unit_amount,
                        currency=item.currency or price.currency,
                        interval=item.interval or price.interval or terms.interval,
                    ),
                    metadata=line_metadata(item.lookup_key),
                )
            )
        else:
            items.append(
                SubscriptionItemSpec(
                    quantity=item.quantity, price=price.id, metadata=line_metadata(item.lookup_key)
                )
            )
    invoiced = terms.collection_method == "send_invoice"
    days = terms.days_until_due if terms.days_until_due is not None else DEFAULT_DAYS_UNTIL_DUE
    return SubscriptionSpec(
        customer=customer,
        items=items,
        metadata={
            "sf_opportunity_id": opportunity_id,
            "sf_account_id": plan.customer.account_id,
            "mapping_version": plan.mapping_version,
        },
        collection_method=terms.collection_method,
        days_until_due=days if invoiced else None,
        payment_behavior=None if invoiced else "default_incomplete",
    )


def schedule_request(
    plan: ProvisioningPlan,
    prices: Mapping[str, BillingPrice],
    *,
    customer: str,
    opportunity_id: str,
    coupons: list[str],
    today: date,
) -> ScheduleSpec:
    """The subscription schedule of a contract starting later or of a ramp: each phase's
    items as `subscription_spec` makes them (so prices resolve, and fail, as for a
    subscription)."""
    requests = [
        subscription_spec(p, prices, customer=customer, opportunity_id=opportunity_id)
        for p in contract.phase_plans(plan)
    ]
    return contract.schedule_spec(
        plan,
        requests,
        customer=customer,
        opportunity_id=opportunity_id,
        coupons=coupons,
        today=today,
    )


def prices_from_catalog(mappings: Mappings) -> dict[str, BillingPrice]:
    """Catalog prices as the mapping files describe them, standing in for Stripe's (for a
    preview without Stripe): their ids and products are placeholders Stripe resolves."""
    return {
        p.lookup_key: BillingPrice(
            id=f"<price with lookup key {p.lookup_key}>",
            lookup_key=p.lookup_key,
            product=f"<product of {p.lookup_key}: {p.product_name}>",
            unit_amount=p.unit_amount,
            currency=p.currency,
            interval=p.interval,
            active=True,
        )
        for p in mappings.catalog_prices()
    }


PricesFrom = Literal["stripe", "mapping catalog"]


@dataclass(frozen=True)
class RequestPreview:
    """The Stripe requests a plan makes, for `mappings preview`: what the steps would send.
    A contract starting later (or a ramp) sends a `schedule` instead of a `subscription`; a
    deal discount first makes its `coupon`."""

    prices_from: PricesFrom
    customer: CustomerSpec | None  # None: a custom plan, nothing in Stripe
    subscription: SubscriptionSpec | None
    problem: str | None = None  # why the deal would park at the subscription step
    note: str = ""
    schedule: ScheduleSpec | None = None
    coupon: CouponSpec | None = None


def preview_request(
    plan: ProvisioningPlan,
    prices: Mapping[str, BillingPrice],
    prices_from: PricesFrom,
    note: str = "",
    today: date | None = None,
) -> RequestPreview:
    """The requests of `customer_spec` and `subscription_spec`, with a placeholder for the
    account's Stripe customer (its id exists only once the customer step ran)."""
    if plan.is_custom:
        return RequestPreview(prices_from, None, None, note=note)
    customer = plan_customer_spec(plan)
    day = today or datetime.now(UTC).date()
    coupon = contract.coupon_spec(plan.opportunity_id, plan.discount) if plan.discount else None
    coupons = [coupon.id] if coupon else []
    stripe_customer = f"<Stripe customer of account {plan.customer.account_id}>"
    try:
        if contract.needs_schedule(plan, day):
            schedule = schedule_request(
                plan,
                prices,
                customer=stripe_customer,
                opportunity_id=plan.opportunity_id,
                coupons=coupons,
                today=day,
            )
            return RequestPreview(
                prices_from, customer, None, note=note, schedule=schedule, coupon=coupon
            )
        subscription = subscription_spec(
            plan, prices, customer=stripe_customer, opportunity_id=plan.opportunity_id
        )
    except SfBridgeError as exc:
        return RequestPreview(prices_from, customer, None, exc.user_message(), note)
    subscription = contract.with_contract(subscription, plan, day, coupons)
    return RequestPreview(prices_from, customer, subscription, note=note, coupon=coupon)


@contextmanager
def keyed(key: str) -> Iterator[None]:
    """Tags an error raised inside with the idempotency key of the request that failed, so the
    attempt records it."""
    try:
        yield
    except Exception as exc:
        if getattr(exc, "idempotency_key", None) is None:
            setattr(exc, "idempotency_key", key)  # noqa: B010
        raise

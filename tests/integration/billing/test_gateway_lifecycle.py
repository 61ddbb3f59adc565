"""The billing port's lifecycle methods on both gateways: the real one over HTTP to the
emulator through the stripe SDK, and the in-memory one the unit tests use. The same scenario
runs on each, so the in-memory gateway stays a faithful stand-in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from sf_bridge.billing.memory import InMemoryBilling
from sf_bridge.billing.port import (
    BillingGateway,
    BillingSubscription,
    CouponSpec,
    CustomerSpec,
    ItemChange,
    PhaseSpec,
    PreviewSpec,
    ScheduleSpec,
    SubscriptionItemSpec,
    SubscriptionSpec,
    SubscriptionUpdate,
)
from sf_bridge.billing.proration import prorated
from sf_bridge.billing.stripe_gateway import StripeGateway
from sf_bridge.errors import BillingRejected
from sf_bridge.sandbox.stripe_emulator import StripeEmulator
from tests.fixtures.stripe import SAMPLE_CATALOG

TEN_DAYS = 10 * 86_400


@dataclass
class Setup:
    gateway: BillingGateway
    prices: dict[str, str]
    advance: Callable[[int], None]
    finalize: Callable[[str], object]


@pytest.fixture(params=["emulator", "memory"])
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    if request.param == "memory":
        moment = [datetime(2026, 3, 1, tzinfo=UTC)]
        memory = InMemoryBilling(clock=lambda: moment[0])
        prices = {e.lookup_key: memory.add_price(e.lookup_key, e.unit_amount).id
                  for e in SAMPLE_CATALOG}  # fmt: skip

        def advance(seconds: int) -> None:
            moment[0] += timedelta(seconds=seconds)

        yield Setup(
            memory, prices, advance, lambda i: memory.finalize_invoice(i, idempotency_key=i)
        )
        return
    emulator: StripeEmulator = request.getfixturevalue("stripe_emulator")
    gateway = StripeGateway(emulator.api_key, api_base=emulator.url)
    yield Setup(
        gateway,
        emulator.seed_catalog(SAMPLE_CATALOG),
        emulator.advance_clock,
        lambda i: gateway.finalize_invoice(i, idempotency_key=f"finalize:{i}"),
    )


def _subscription(setup: Setup) -> BillingSubscription:
    customer = setup.gateway.create_customer(
        CustomerSpec(name="Acme", email=None, metadata={}), idempotency_key="customer"
    )
    return setup.gateway.create_subscription(
        SubscriptionSpec(
            customer=customer.id,
            items=[SubscriptionItemSpec(quantity=2, price=setup.prices["pro_monthly"])],
            metadata={"sf_opportunity_id": "006A"},
            collection_method="send_invoice",
            days_until_due=30,
        ),
        idempotency_key="subscription",
    )


def _ten_days_in(setup: Setup, sub: BillingSubscription) -> tuple[int, int, datetime]:
    assert sub.current_period_start is not None
    assert sub.current_period_end is not None
    setup.advance(TEN_DAYS + 5)
    at = sub.current_period_start + timedelta(seconds=TEN_DAYS)
    return int(sub.current_period_start.timestamp()), int(sub.current_period_end.timestamp()), at


def test_both_gateways_satisfy_the_port() -> None:
    gateways: list[BillingGateway] = [InMemoryBilling(), StripeGateway("sk_test_x")]
    assert all(callable(g.record_payment) for g in gateways)
    assert all(callable(g.invoice_payments) for g in gateways)


def test_update_returns_the_items_and_always_invoice_bills_the_proration(setup: Setup) -> None:
    sub = _subscription(setup)
    (item,) = sub.items
    assert (item.price, item.quantity, item.unit_amount) == (setup.prices["pro_monthly"], 2, 9_900)
    start, end, at = _ten_days_in(setup, sub)

    updated = setup.gateway.update_subscription(
        sub.id,
        SubscriptionUpdate(
            items=[ItemChange(item_id=item.id, quantity=5)],
            proration_behavior="always_invoice",
            proration_date=at,
            metadata={"deal_change": "upsell"},
        ),
        idempotency_key="upsell",
    )

    assert [(i.id, i.quantity) for i in updated.items] == [(item.id, 5)]
    assert updated.metadata["deal_change"] == "upsell"
    assert updated.latest_invoice != sub.latest_invoice
    assert updated.latest_invoice is not None
    invoice = setup.gateway.get_invoice(updated.latest_invoice)
    moment = int(at.timestamp())
    expected = prorated(5 * 9_900, start, end, moment) - prorated(2 * 9_900, start, end, moment)
    assert invoice.amount_due == expected


def test_preview_flags_proration_lines_and_changes_nothing(setup: Setup) -> None:
    sub = _subscription(setup)
    (item,) = sub.items
    start, end, at = _ten_days_in(setup, sub)

    preview = setup.gateway.preview_invoice(
        PreviewSpec(
            subscription=sub.id,
            items=[
                ItemChange(item_id=item.id, deleted=True),
                ItemChange(price=setup.prices["starter_monthly"], quantity=1),
            ],
            proration_date=at,
        )
    )

    moment = int(at.timestamp())
    assert sorted(line.amount for line in preview.proration_lines) == [
        -prorated(2 * 9_900, start, end, moment),
        prorated(2_900, start, end, moment),
    ]
    assert [line.amount for line in preview.lines if not line.proration] == [2_900]
    assert preview.total == sum(line.amount for line in preview.lines)
    unchanged = setup.gateway.get_subscription(sub.id)
    assert unchanged is not None
    assert [(i.id, i.quantity) for i in unchanged.items] == [(item.id, 2)]


def test_coupon_is_found_again_by_its_id_and_discounts_the_next_invoice(setup: Setup) -> None:
    sub = _subscription(setup)
    spec = CouponSpec(id="sfb-006A-ramp", duration="forever", percent_off=25)
    first = setup.gateway.create_coupon(spec, idempotency_key="coupon-1")
    again = setup.gateway.create_coupon(spec, idempotency_key="coupon-2")  # a later retry
    assert first.id == again.id == "sfb-006A-ramp"

    updated = setup.gateway.update_subscription(
        sub.id, SubscriptionUpdate(coupons=[first.id]), idempotency_key="discount"
    )
    assert len(updated.discounts) == 1
    preview = setup.gateway.preview_invoice(PreviewSpec(subscription=sub.id))
    assert preview.subtotal == 19_800
    assert preview.total_discount == 4_950
    assert preview.amount_due == 14_850


def test_partial_payments_outside_stripe(setup: Setup) -> None:
    sub = _subscription(setup)
    assert sub.latest_invoice is not None
    setup.finalize(sub.latest_invoice)
    invoice = sub.latest_invoice
    wire = {"reference": "BANK-1", "initiated_at": 1_790_000_000}

    assert setup.gateway.invoice_payments(invoice) == []
    part = setup.gateway.record_payment(invoice, 8_000, idempotency_key="wire-1", **wire)
    assert (part.status, part.amount_paid, part.amount_remaining) == ("open", 8_000, 11_800)
    retried = setup.gateway.record_payment(invoice, 8_000, idempotency_key="wire-1", **wire)
    assert retried.amount_paid == 8_000  # the same key records the payment once
    with pytest.raises(BillingRejected, match="same parameters"):
        setup.gateway.record_payment(
            invoice, 8_000, idempotency_key="wire-1", reference="BANK-1", initiated_at=1
        )

    with pytest.raises(BillingRejected, match="exceeds"):
        setup.gateway.record_payment(invoice, 20_000, idempotency_key="wire-2", **wire)
    rest = setup.gateway.record_payment(
        invoice, 11_800, idempotency_key="wire-3", reference="BANK-2", initiated_at=1_790_000_100
    )
    assert (rest.status, rest.amount_paid, rest.amount_remaining) == ("paid", 19_800, 0)
    payments = setup.gateway.invoice_payments(invoice)
    assert [(p.reference, p.amount, p.currency, p.status) for p in payments] == [
        ("BANK-2", 11_800, "usd", "paid"),
        ("BANK-1", 8_000, "usd", "paid"),
    ]
    assert all(p.invoice == invoice and p.payment_record for p in payments)


def _customer(setup: Setup) -> str:
    return setup.gateway.create_customer(
        CustomerSpec(name="Acme", email=None, metadata={}), idempotency_key="customer"
    ).id


def test_schedule_found_by_its_tag_updated_and_released(setup: Setup) -> None:
    customer = _customer(setup)
    pro = setup.prices["pro_monthly"]
    spec = ScheduleSpec(
        customer=customer,
        phases=[
            PhaseSpec(
                items=[SubscriptionItemSpec(quantity=2, price=pro)],
                months=1,
                metadata={"sf_opportunity_id": "006RAMP"},
            ),
            PhaseSpec(items=[SubscriptionItemSpec(quantity=4, price=pro)], months=12),
        ],
        metadata={"sf_opportunity_id": "006RAMP"},
    )
    schedule = setup.gateway.create_schedule(spec, idempotency_key="ramp")
    assert schedule.status == "active"
    assert schedule.subscription is not None
    assert [p.items for p in schedule.phases] == [((pro, 2),), ((pro, 4),)]
    assert schedule.phases[0].end_date == schedule.phases[1].start_date

    found = setup.gateway.find_schedule(sf_opportunity_id="006RAMP")
    assert found is not None
    assert found.id == schedule.id
    assert setup.gateway.find_schedule(sf_opportunity_id="006OTHER") is None
    assert setup.gateway.get_schedule("sub_sched_nope") is None

    updated = setup.gateway.update_schedule(
        schedule.id,
        [
            PhaseSpec(items=[SubscriptionItemSpec(quantity=2, price=pro)], months=1),
            PhaseSpec(items=[SubscriptionItemSpec(quantity=6, price=pro)], months=12),
        ],
        idempotency_key="ramp-more",
        end_behavior="cancel",
    )
    assert [p.items[0][1] for p in updated.phases] == [2, 6]
    assert updated.end_behavior == "cancel"
    assert updated.phases[0].start_date == schedule.phases[0].start_date

    released = setup.gateway.release_schedule(schedule.id, idempotency_key="release")
    assert (released.status, released.released_subscription) == (
        "released",
        schedule.subscription,
    )
    with pytest.raises(BillingRejected, match="released"):
        setup.gateway.cancel_schedule(schedule.id, idempotency_key="cancel")


def test_schedule_later_start_and_cancel_of_a_scheduled_subscription(setup: Setup) -> None:
    customer = _customer(setup)
    later = datetime.now(UTC) + timedelta(days=400)
    item = SubscriptionItemSpec(quantity=1, price=setup.prices["pro_monthly"])
    waiting = setup.gateway.create_schedule(
        ScheduleSpec(
            customer=customer, phases=[PhaseSpec(items=[item])], metadata={}, start_date=later
        ),
        idempotency_key="later",
    )
    assert (waiting.status, waiting.subscription) == ("not_started", None)
    first = setup.gateway.preview_invoice(PreviewSpec(schedule=waiting.id))
    assert first.amount_due == 9_900
    assert setup.gateway.get_schedule(waiting.id).status == "not_started"  # type: ignore[union-attr]

    sub = _subscription(setup)
    schedule = setup.gateway.schedule_subscription(sub.id, idempotency_key="adopt")
    assert (schedule.status, schedule.subscription) == ("active", sub.id)
    canceled = setup.gateway.cancel_schedule(schedule.id, idempotency_key="cancel")
    assert canceled.status == "canceled"
    after = setup.gateway.get_subscription(sub.id)
    assert after is not None
    assert after.status == "canceled"

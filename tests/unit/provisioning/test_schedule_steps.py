"""The subscription and entitlements steps on contract dates, ramps and deal discounts, with
the in-memory billing gateway: pure outcomes, no database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

from sf_bridge.billing.memory import InMemoryBilling
from sf_bridge.billing.port import CustomerSpec
from sf_bridge.billing.requests import schedule_params, subscription_params
from sf_bridge.plan import ContractTerms, Discount, PlanPhase, ProvisioningPlan
from sf_bridge.provisioning.outcome import DealView
from sf_bridge.provisioning.prices import PriceCache
from sf_bridge.provisioning.schedule import coupon_spec, dated_grants, with_contract
from sf_bridge.provisioning.steps import StepContext, entitlements_step, subscription_step
from sf_bridge.provisioning.stripe_request import preview_request
from tests.fixtures.provisioning import make_plan

OPP = "006000000000001AAA"
TODAY = date(2026, 12, 2)


def _setup() -> tuple[StepContext, str]:
    billing = InMemoryBilling()
    billing.add_price("pro_monthly", 5000)
    customer = billing.create_customer(
        CustomerSpec(name="Acme", email=None, metadata={}), idempotency_key="k"
    )
    ctx = StepContext(
        billing=billing, mappings_loader=lambda: None, prices=PriceCache(), today=lambda: TODAY
    )
    return ctx, customer.id


def _deal(plan: ProvisioningPlan, customer: str, **extra: object) -> DealView:
    return DealView(
        id=1,
        opportunity_id=OPP,
        status="customer_ready",
        current_step="subscription",
        attempts=0,
        source="stream",
        customer_id=1,
        stripe_customer_id=customer,
        plan=plan.to_dict(),
        **extra,  # type: ignore[arg-type]
    )


def _next_month(term: int | None = 12) -> ContractTerms:
    return ContractTerms(
        start_date="2027-01-01", end_date="2028-01-01" if term else None, term_months=term
    )


def test_a_later_start_is_a_schedule_with_nothing_to_invoice() -> None:
    ctx, customer = _setup()
    plan = replace(make_plan(OPP), contract=_next_month())
    outcome = subscription_step(ctx, _deal(plan, customer))
    assert outcome.status == "scheduled"
    assert outcome.skip_to == "entitlements"
    assert "stripe_subscription_id" not in outcome.changes
    assert outcome.changes["contract_start_at"] == datetime(2027, 1, 1, tzinfo=UTC)
    assert ctx.billing is not None
    schedule = ctx.billing.get_schedule(outcome.changes["stripe_schedule_id"])
    assert schedule is not None
    assert (schedule.status, schedule.end_behavior) == ("not_started", "cancel")


def test_the_stored_schedule_is_taken_again_instead_of_a_second_one() -> None:
    ctx, customer = _setup()
    plan = replace(make_plan(OPP), contract=_next_month())
    first = subscription_step(ctx, _deal(plan, customer))
    schedule_id = first.changes["stripe_schedule_id"]
    again = subscription_step(ctx, _deal(plan, customer, stripe_schedule_id=schedule_id))
    resumed = subscription_step(ctx, replace(_deal(plan, customer), resumed=True))
    assert again.changes["stripe_schedule_id"] == schedule_id
    assert resumed.changes["stripe_schedule_id"] == schedule_id
    assert again.idempotency_key is None


def test_an_open_ended_contract_is_released_to_run_on() -> None:
    ctx, customer = _setup()
    plan = replace(make_plan(OPP), contract=_next_month(term=None))
    outcome = subscription_step(ctx, _deal(plan, customer))
    assert ctx.billing is not None
    schedule = ctx.billing.get_schedule(outcome.changes["stripe_schedule_id"])
    assert schedule is not None
    assert schedule.end_behavior == "release"


def test_a_coupon_id_names_the_deal_and_the_discount_terms() -> None:
    once = coupon_spec(OPP, Discount("once", percent_off=20.0))
    assert once.id == coupon_spec(OPP, Discount("once", percent_off=20.0)).id
    assert once.id != coupon_spec(OPP, Discount("forever", percent_off=20.0)).id
    assert once.id != coupon_spec("006000000000002AAA", Discount("once", percent_off=20.0)).id
    amount = coupon_spec(OPP, Discount("repeating", amount_off=1000, currency="USD", months=3))
    assert (amount.amount_off, amount.currency, amount.duration_in_months) == (1000, "usd", 3)
    assert amount.percent_off is None


def test_a_subscription_now_carries_the_coupon_and_a_backdated_start() -> None:
    ctx, customer = _setup()
    contract = ContractTerms(start_date="2026-11-20", term_months=12, past_start="backdate")
    plan = replace(make_plan(OPP), contract=contract, discount=Discount("once", 10.0))
    outcome = subscription_step(ctx, _deal(plan, customer))
    assert outcome.changes["stripe_subscription_id"]
    from sf_bridge.billing.port import SubscriptionSpec

    spec = SubscriptionSpec(customer="cus", items=(), metadata={}, collection_method="send_invoice")
    params = subscription_params(with_contract(spec, plan, TODAY, ["c1"]))
    assert params["discounts"] == [{"coupon": "c1"}]
    assert params["backdate_start_date"] == int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())
    start_now = replace(plan, contract=replace(contract, past_start="start_now"))
    assert "backdate_start_date" not in subscription_params(
        with_contract(spec, start_now, TODAY, [])
    )


def test_ramp_grants_are_dated_per_phase() -> None:
    base = make_plan(OPP)
    second = (replace(base.entitlements[1], value=10),)
    phases = (
        PlanPhase("2027-01-01", "2028-01-01", base.items),
        PlanPhase("2028-01-01", None, base.items, entitlements=second),
    )
    plan = replace(base, phases=phases, contract=ContractTerms(start_date="2027-01-01"))
    grants = dated_grants(plan, TODAY)
    assert [(g.phase, g.valid_from, g.valid_until) for g in grants] == [
        (0, datetime(2027, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC)),
        (1, datetime(2028, 1, 1, tzinfo=UTC), None),
    ]
    assert grants[0].entitlements == base.entitlements
    assert grants[1].entitlements == second


def test_a_scheduled_deals_entitlements_begin_at_its_start() -> None:
    ctx, customer = _setup()
    plan = replace(make_plan(OPP), contract=_next_month())
    deal = _deal(plan, customer, stripe_schedule_id="sub_sched_1")
    outcome = entitlements_step(ctx, deal)
    assert outcome.status == "scheduled"
    assert outcome.grants == ()
    (grant,) = outcome.dated_grants
    assert grant.valid_from == datetime(2027, 1, 1, tzinfo=UTC)
    assert grant.valid_until == datetime(2028, 1, 1, tzinfo=UTC)


def test_a_plan_without_dates_grants_as_before() -> None:
    ctx, customer = _setup()
    plan = make_plan(OPP)
    outcome = entitlements_step(ctx, _deal(plan, customer))
    assert outcome.grants == plan.entitlements
    assert outcome.dated_grants == ()


def test_the_preview_shows_the_schedule_and_coupon_the_step_sends() -> None:
    ctx, customer = _setup()
    assert isinstance(ctx.billing, InMemoryBilling)
    plan = replace(make_plan(OPP), contract=_next_month(), discount=Discount("once", 15.0))
    prices = ctx.billing.find_prices(["pro_monthly"])
    preview = preview_request(plan, prices, "stripe", today=TODAY)
    assert preview.subscription is None
    assert preview.schedule is not None
    assert preview.coupon is not None
    outcome = subscription_step(ctx, _deal(plan, customer))
    sent = ctx.billing.get_schedule(outcome.changes["stripe_schedule_id"])
    assert sent is not None
    assert preview.coupon.id in ctx.billing.coupons
    body = schedule_params(preview.schedule)
    assert body["start_date"] == int(datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    assert body["phases"][0]["discounts"] == [{"coupon": preview.coupon.id}]
    assert [p.end_date for p in sent.phases] == [datetime(2028, 1, 1, tzinfo=UTC)]


def test_the_preview_of_a_deal_starting_now_is_a_subscription_with_its_coupon() -> None:
    ctx, _ = _setup()
    assert isinstance(ctx.billing, InMemoryBilling)
    plan = replace(make_plan(OPP), discount=Discount("forever", amount_off=500, currency="usd"))
    prices = ctx.billing.find_prices(["pro_monthly"])
    preview = preview_request(plan, prices, "stripe", today=TODAY)
    assert preview.schedule is None
    assert preview.subscription is not None
    assert preview.coupon is not None
    assert list(preview.subscription.coupons) == [preview.coupon.id]


def test_the_preview_prints_the_schedule_phases_and_the_coupon() -> None:
    from rich.console import Console

    from sf_bridge.mapping.render import print_request, request_json

    ctx, _ = _setup()
    assert isinstance(ctx.billing, InMemoryBilling)
    plan = replace(make_plan(OPP), contract=_next_month(), discount=Discount("once", 15.0))
    preview = preview_request(plan, ctx.billing.find_prices(["pro_monthly"]), "stripe", today=TODAY)
    console = Console(record=True, width=160)
    print_request(console, preview)
    text = console.export_text()
    assert "subscription schedule: starts 2027-01-01, 1 phase(s), then cancels" in text
    assert "15% off, once" in text
    body = request_json(preview)
    assert body["subscription"] is None
    assert body["schedule"]["end_behavior"] == "cancel"
    assert body["coupon"]["percent_off"] == 15.0

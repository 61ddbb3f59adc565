"""Contract dates, ramps and deal discounts through the real Stripe gateway and the emulator:
a start next month is a subscription schedule with nothing invoiced until the start; a ramp
is a schedule of yearly phases with their own prices; deal discounts are coupons reflected in
the invoice totals; a past start is backdated when the mapping says so."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from sf_bridge.db.models import EntitlementGrant
from sf_bridge.entitlements.ledger import effective_entitlements
from sf_bridge.entitlements.view import read_customer
from sf_bridge.invoices.events import apply_stripe_event
from sf_bridge.plan import ContractTerms, Discount, PlanPhase, ProvisioningPlan, add_months
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.runner import StepHooks
from tests.fixtures.provisioning import Harness, drain, make_plan

OPP = "006000000000001AAA"
ACCOUNT = "001000000000001AAA"
DAY = 86_400


def status_is(h: Harness, status: str) -> Any:
    """The deal rests in `status` (no step left to run), or needs attention."""

    def check() -> bool:
        deal = h.deal(OPP)
        return deal.status == "needs_attention" or (
            deal.status == status and deal.current_step is None
        )

    return check


def enqueue(h: Harness, plan: ProvisioningPlan) -> None:
    h.add_opportunity(plan)
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [OPP], source="test")


def today(emu: Any) -> date:
    return datetime.fromtimestamp(emu.now(), tz=UTC).date()


def next_month(emu: Any, *, term: int | None = 12) -> ContractTerms:
    start = add_months(today(emu), 1)
    end = add_months(start, term) if term else None
    return ContractTerms(
        start_date=start.isoformat(),
        end_date=end.isoformat() if end else None,
        term_months=term,
        source="Opportunity.Contract_Start_Date__c",
    )


def features(h: Harness, at: datetime) -> dict[str, Any]:
    with h.session_factory() as session:
        return {k: v.value for k, v in effective_entitlements(session, ACCOUNT, at).items()}


def start_of(contract: ContractTerms) -> datetime:
    assert contract.start_date
    return datetime.fromisoformat(contract.start_date).replace(tzinfo=UTC)


def advance_past_start(h: Harness, emu: Any, contract: ContractTerms) -> None:
    """Both clocks move past the contract's start (Stripe's, and the worker's)."""
    seconds = (start_of(contract) - datetime.fromtimestamp(emu.now(), tz=UTC)).total_seconds()
    emu.advance_clock(seconds + 3600)
    h.clock.advance(seconds + 3600)


def test_a_contract_starting_next_month_is_scheduled_then_invoiced_at_its_start(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    contract = next_month(emu)
    enqueue(h, replace(make_plan(OPP), contract=contract))
    drain(h.worker(), status_is(h, "scheduled"))

    deal = h.deal(OPP)
    assert (deal.status, deal.stripe_subscription_id, deal.stripe_invoice_id) == (
        "scheduled",
        None,
        None,
    ), deal.last_error
    assert emu.count("subscription") == 0
    assert emu.count("invoice") == 0
    schedule = emu.get(deal.stripe_schedule_id)
    assert schedule["status"] == "not_started"
    assert schedule["phases"][0]["start_date"] == int(start_of(contract).timestamp())
    assert schedule["end_behavior"] == "cancel"
    assert schedule["metadata"]["sf_opportunity_id"] == OPP
    assert h.crm.written[OPP]["Provisioning_Status__c"] == "Scheduled"
    assert deal.contract_start_at == start_of(contract)
    assert features(h, datetime.now(UTC)) == {}
    assert features(h, start_of(contract) + timedelta(days=1)) == {"sso": True, "seats": 3}
    with h.session_factory() as session:
        answer = read_customer(session.connection(), ACCOUNT, datetime.now(UTC))
    assert answer.features["seats"]["access"] is False
    assert answer.features["seats"]["starts_at"] == f"{contract.start_date}T00:00:00Z"
    with h.session_factory() as session:
        later = read_customer(session.connection(), ACCOUNT, start_of(contract))
    assert later.features["seats"]["limit"] == 3
    assert contract.end_date
    with h.session_factory() as session:
        ended = datetime.fromisoformat(contract.end_date).replace(tzinfo=UTC)
        after = read_customer(session.connection(), ACCOUNT, ended)
    assert after.features["seats"]["ended_at"] == f"{contract.end_date}T00:00:00Z"

    advance_past_start(h, emu, contract)
    drain(h.worker(), status_is(h, "done"))
    deal = h.deal(OPP)
    assert deal.status == "done", deal.last_error
    assert emu.count("subscription") == 1
    assert emu.count("invoice") == 1
    invoice = emu.get(deal.stripe_invoice_id)
    assert invoice["status"] == "open"
    assert deal.hosted_invoice_url == invoice["hosted_invoice_url"]
    assert h.crm.written[OPP]["Invoice_URL__c"] == invoice["hosted_invoice_url"]
    assert h.crm.written[OPP]["Provisioning_Status__c"] == "Provisioned"
    sub = emu.get(deal.stripe_subscription_id)
    assert sub["schedule"] == deal.stripe_schedule_id
    with h.session_factory() as session:
        tied = session.scalars(select(EntitlementGrant.stripe_subscription_id)).all()
    assert set(tied) == {deal.stripe_subscription_id}


def test_the_schedules_event_moves_the_deal_on_and_a_second_one_changes_nothing(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    contract = next_month(emu, term=None)
    enqueue(h, replace(make_plan(OPP), contract=contract))
    drain(h.worker(), status_is(h, "scheduled"))
    emu.advance_clock((start_of(contract).timestamp() - emu.now()) + 60)
    created = [
        e for e in emu.events("customer.subscription.created") if e["data"]["object"]["schedule"]
    ]
    assert len(created) == 1
    outcomes = []
    for _ in range(2):
        with h.session_factory() as session, session.begin():
            outcomes.append(apply_stripe_event(session, created[0], h.billing))
    assert outcomes == ["schedule_started", "unchanged"]
    deal = h.deal(OPP)
    assert (deal.status, deal.current_step) == ("subscription_created", "invoice")
    assert emu.get(deal.stripe_schedule_id)["end_behavior"] == "release"


def test_a_ramp_of_three_yearly_phases_steps_its_prices(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    start = add_months(today(emu), 1)
    years = [add_months(start, 12 * n) for n in range(4)]
    base = make_plan(OPP)
    item = base.items[0]
    phases = tuple(
        PlanPhase(
            start_date=years[n].isoformat(),
            end_date=years[n + 1].isoformat(),
            items=(replace(item, unit_amount=amount, quantity=10 + 5 * n),),
        )
        for n, amount in enumerate((4000, 4500, 5000))
    )
    contract = ContractTerms(
        start_date=start.isoformat(), end_date=years[3].isoformat(), term_months=36
    )
    plan = replace(base, items=phases[0].items, phases=phases, contract=contract)
    enqueue(h, plan)
    drain(h.worker(), status_is(h, "scheduled"))
    deal = h.deal(OPP)
    schedule = emu.get(deal.stripe_schedule_id)
    assert [p["end_date"] for p in schedule["phases"]] == [
        int(datetime.combine(y, datetime.min.time(), UTC).timestamp()) for y in years[1:]
    ]
    amounts = [
        (emu.get(p["items"][0]["price"])["unit_amount"], p["items"][0]["quantity"])
        for p in schedule["phases"]
    ]
    assert amounts == [(4000, 10), (4500, 15), (5000, 20)]
    assert emu.count("invoice") == 0
    with h.session_factory() as session:
        grants = session.scalars(select(EntitlementGrant).order_by(EntitlementGrant.phase)).all()
    assert sorted({g.phase for g in grants}) == [0, 1, 2]

    advance_past_start(h, emu, contract)
    drain(h.worker(), status_is(h, "done"))
    first = emu.get(h.deal(OPP).stripe_invoice_id)
    assert first["amount_due"] == 4000 * 10


@pytest.mark.parametrize(
    ("discount", "first_total", "second_total"),
    [
        (Discount("once", percent_off=20.0), 12000, 15000),
        (Discount("repeating", percent_off=10.0, months=2), 13500, 13500),
        (Discount("forever", amount_off=1000, currency="usd"), 14000, 14000),
        (Discount("once", amount_off=2500, currency="usd"), 12500, 15000),
    ],
)
def test_a_deal_discount_is_a_coupon_reflected_in_the_invoice_totals(
    stripe_harness: Harness,
    provisioning_emulator: Any,
    discount: Discount,
    first_total: int,
    second_total: int,
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    enqueue(h, replace(make_plan(OPP), discount=discount))  # 3 x 50.00 a month
    drain(h.worker(), status_is(h, "done"))
    deal = h.deal(OPP)
    assert deal.status == "done", deal.last_error
    assert emu.count("coupon") == 1
    assert emu.get(deal.stripe_invoice_id)["total"] == first_total
    emu.advance_clock(32 * DAY)  # the next month's invoice
    renewal = [
        i
        for i in emu.objects("invoice")
        if i["id"] != deal.stripe_invoice_id and i["billing_reason"] == "subscription_cycle"
    ]
    assert [i["total"] for i in renewal] == [second_total]


def test_a_scheduled_deal_discount_is_on_the_schedules_phases(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    contract = next_month(emu)
    plan = replace(make_plan(OPP), contract=contract, discount=Discount("forever", 25.0))
    enqueue(h, plan)
    drain(h.worker(), status_is(h, "scheduled"))
    schedule = emu.get(h.deal(OPP).stripe_schedule_id)
    coupon = emu.objects("coupon")[0]
    assert [d["coupon"] for d in schedule["phases"][0]["discounts"]] == [coupon["id"]]
    advance_past_start(h, emu, contract)
    drain(h.worker(), status_is(h, "done"))
    assert emu.get(h.deal(OPP).stripe_invoice_id)["total"] == 11250


def test_a_past_start_is_backdated_when_the_mapping_says_so(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    start = today(emu) - timedelta(days=10)
    contract = ContractTerms(start_date=start.isoformat(), term_months=12, past_start="backdate")
    enqueue(h, replace(make_plan(OPP), contract=contract))
    drain(h.worker(), status_is(h, "done"))
    deal = h.deal(OPP)
    assert deal.status == "done", deal.last_error
    sub = emu.get(deal.stripe_subscription_id)
    assert sub["start_date"] == int(datetime.combine(start, datetime.min.time(), UTC).timestamp())
    assert sub["items"]["data"][0]["current_period_start"] == sub["start_date"]
    with h.session_factory() as session:
        grant = session.scalars(select(EntitlementGrant)).first()
    assert grant is not None
    assert grant.valid_from == datetime.combine(start, datetime.min.time(), UTC)


def test_a_past_start_starts_now_by_default(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    start = today(emu) - timedelta(days=10)
    enqueue(h, replace(make_plan(OPP), contract=ContractTerms(start_date=start.isoformat())))
    drain(h.worker(), status_is(h, "done"))
    sub = emu.get(h.deal(OPP).stripe_subscription_id)
    assert sub["start_date"] >= emu.now() - 60


class SimulatedCrash(BaseException):
    pass


@pytest.mark.parametrize("phase", ["before", "after"])
@pytest.mark.parametrize("step", ["subscription", "entitlements", "write_back"])
def test_a_crash_around_a_scheduled_deals_commit_makes_one_schedule_and_one_coupon(
    stripe_harness: Harness, provisioning_emulator: Any, step: str, phase: str
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    contract = next_month(emu)
    enqueue(h, replace(make_plan(OPP), contract=contract, discount=Discount("once", 10.0)))
    fired: list[bool] = []

    def hook(at: str, _deal_id: int) -> None:
        if at == step and not fired:
            fired.append(True)
            raise SimulatedCrash(f"{phase} commit of {step}")

    hooks = StepHooks(before_commit=hook) if phase == "before" else StepHooks(after_commit=hook)
    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=hooks, owner="first"), status_is(h, "scheduled"))
    h.clock.advance(120)
    drain(h.worker(owner="restarted"), status_is(h, "scheduled"))
    assert h.deal(OPP).status == "scheduled"
    assert emu.count("subscription_schedule") == 1
    assert emu.count("coupon") == 1
    advance_past_start(h, emu, contract)
    drain(h.worker(owner="restarted"), status_is(h, "done"))
    assert h.deal(OPP).status == "done"
    assert (emu.count("subscription"), emu.count("invoice")) == (1, 1)


def test_a_crash_after_the_schedule_request_with_its_response_lost_finds_it_by_its_tag(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """The schedule was created but its id never stored: the resumed step lists the
    customer's schedules and takes the one tagged with the deal."""
    h, emu = stripe_harness, provisioning_emulator
    contract = next_month(emu)
    enqueue(h, replace(make_plan(OPP), contract=contract))
    emu.fail_next("POST /v1/subscription_schedules", "drop_after")
    drain(h.worker(), status_is(h, "scheduled"))
    assert emu.count("subscription_schedule") == 1
    assert h.deal(OPP).stripe_schedule_id == emu.objects("subscription_schedule")[0]["id"]


@pytest.mark.parametrize("phase", ["before", "after"])
@pytest.mark.parametrize("step", ["invoice", "entitlements", "write_back"])
def test_a_crash_after_the_contracts_start_finalizes_one_invoice(
    stripe_harness: Harness, provisioning_emulator: Any, step: str, phase: str
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    contract = next_month(emu)
    enqueue(h, replace(make_plan(OPP), contract=contract))
    drain(h.worker(owner="first"), status_is(h, "scheduled"))
    advance_past_start(h, emu, contract)
    fired: list[bool] = []

    def hook(at: str, _deal_id: int) -> None:
        if at == step and not fired:
            fired.append(True)
            raise SimulatedCrash(f"{phase} commit of {step}")

    hooks = StepHooks(before_commit=hook) if phase == "before" else StepHooks(after_commit=hook)
    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=hooks, owner="second"), status_is(h, "done"))
    h.clock.advance(120)
    drain(h.worker(owner="restarted"), status_is(h, "done"))
    deal = h.deal(OPP)
    assert deal.status == "done", deal.last_error
    assert (emu.count("subscription"), emu.count("invoice")) == (1, 1)
    assert emu.get(deal.stripe_invoice_id)["status"] == "open"
    assert h.crm.written[OPP]["Invoice_URL__c"] == deal.hosted_invoice_url


def test_a_schedule_cancelled_before_its_start_cancels_the_deal_and_its_grants(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    contract = next_month(emu)
    enqueue(h, replace(make_plan(OPP), contract=contract))
    drain(h.worker(), status_is(h, "scheduled"))
    assert h.billing is not None
    h.billing.cancel_schedule(h.deal(OPP).stripe_schedule_id or "", idempotency_key="cancel-1")
    (event,) = emu.events("subscription_schedule.canceled")
    outcomes = []
    for _ in range(2):
        with h.session_factory() as session, session.begin():
            outcomes.append(apply_stripe_event(session, event, h.billing))
    assert outcomes == ["schedule_ended", "unchanged"]
    deal = h.deal(OPP)
    assert (deal.status, deal.last_error_code) == ("cancelled", "schedule_ended")
    with h.session_factory() as session:
        active = session.scalars(
            select(EntitlementGrant).where(EntitlementGrant.active.is_(True))
        ).all()
    assert active == []
    assert features(h, start_of(contract) + timedelta(days=1)) == {}
    advance_past_start(h, emu, contract)
    h.worker().run_once()
    assert h.deal(OPP).status == "cancelled"
    assert emu.count("subscription") == 0

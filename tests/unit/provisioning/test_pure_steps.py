"""The per-deal steps as pure functions: a plain view of the deal in, an outcome out, with the
in-memory billing port and no database."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from sf_bridge.billing.memory import InMemoryBilling
from sf_bridge.errors import PermanentError
from sf_bridge.provisioning.outcome import CustomerView, DealView
from sf_bridge.provisioning.prices import PriceCache
from sf_bridge.provisioning.steps import (
    StepContext,
    customer_step,
    entitlements_step,
    invoice_step,
    map_step,
    subscription_step,
)
from tests.fixtures.provisioning import make_plan

OPP = "006000000000001AAA"


def _ctx(billing: InMemoryBilling, plan: object = None) -> StepContext:
    return StepContext(
        billing=billing,
        mappings_loader=lambda: None,
        mapper=lambda _opp, _m: plan,  # type: ignore[arg-type,return-value]
        prices=PriceCache(),
    )


def _view(**changes: object) -> DealView:
    base = DealView(
        id=1,
        opportunity_id=OPP,
        status="mapped",
        current_step="customer",
        attempts=0,
        source="stream",
        plan=make_plan(OPP).to_dict(),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _customer(stripe_id: str | None = None) -> CustomerView:
    return CustomerView(1, "001000000000001AAA/USD", "001000000000001AAA", "Acme", None, stripe_id)


def test_the_domain_loads_neither_the_database_layer_nor_the_stripe_sdk() -> None:
    probe = (
        "import sys, sf_bridge.provisioning.steps, sf_bridge.provisioning.outcome; "
        "print(sorted(m for m in ('sqlalchemy', 'stripe') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_map_returns_the_plan_to_record() -> None:
    plan = make_plan(OPP)
    outcome = map_step(_ctx(InMemoryBilling(), plan), _view(plan=None, opportunity={"Id": OPP}))
    assert outcome.changes["plan"] == plan.to_dict()
    assert outcome.changes["account_id"] == "001000000000001AAA"


def test_customer_creates_once_and_says_what_to_record() -> None:
    billing = InMemoryBilling()
    outcome = customer_step(_ctx(billing), _view(), _customer())
    created = outcome.stripe_customer_id
    assert created
    assert billing.calls["create_customer"] == 1
    assert outcome.changes == {
        "customer_id": 1,
        "stripe_customer_id": created,
        "account_id": "001000000000001AAA",
    }
    assert outcome.idempotency_key
    assert outcome.idempotency_key.startswith("sfb-customer-")
    # A customers row that already has its Stripe customer is reused without a request.
    again = customer_step(_ctx(billing), _view(), _customer(created))
    assert again.stripe_customer_id is None
    assert again.changes["stripe_customer_id"] == created
    assert billing.calls["create_customer"] == 1


def test_a_resumed_customer_step_finds_what_an_earlier_attempt_created() -> None:
    billing = InMemoryBilling()
    first = customer_step(_ctx(billing), _view(), _customer())
    found = customer_step(_ctx(billing), _view(resumed=True), _customer())
    assert found.stripe_customer_id == first.stripe_customer_id
    assert found.detail["found_by"] == "search"
    assert billing.calls["create_customer"] == 1


def test_subscription_then_invoice_then_entitlements() -> None:
    billing = InMemoryBilling()
    billing.add_price("pro_monthly", 5000)
    ctx = _ctx(billing)
    customer = customer_step(ctx, _view(), _customer())
    deal = _view().with_changes(customer.changes)
    sub = subscription_step(ctx, deal)
    assert str(sub.changes["stripe_subscription_id"]).startswith("sub_")
    deal = deal.with_changes(sub.changes)
    # Once recorded, the subscription is not asked for again.
    assert subscription_step(ctx, deal).changes == {}
    invoice = invoice_step(ctx, deal)
    assert invoice.changes["invoice_status"] == "open"
    assert invoice.changes["hosted_invoice_url"]
    deal = deal.with_changes(invoice.changes)
    grants = entitlements_step(ctx, deal)
    assert [g.feature for g in grants.grants] == ["sso", "seats"]


def test_steps_refuse_a_deal_without_what_they_need_with_a_fix() -> None:
    ctx = _ctx(InMemoryBilling())
    with pytest.raises(PermanentError, match="no provisioning plan") as info:
        subscription_step(ctx, _view(plan=None))
    assert "replay" in info.value.user_message()
    with pytest.raises(PermanentError, match="no Stripe customer"):
        subscription_step(ctx, _view())
    with pytest.raises(PermanentError, match="no customer to grant"):
        entitlements_step(ctx, _view())


def test_a_custom_plan_asks_the_store_for_its_customers_row_and_calls_no_stripe() -> None:
    billing = InMemoryBilling()
    plan = make_plan(OPP, custom=True)
    outcome = customer_step(_ctx(billing), _view(plan=plan.to_dict()), None)
    assert outcome.ensure_customer == plan.customer
    assert billing.total_calls == 0


def test_a_renewal_ramp_is_phased_on_a_schedule_once_whatever_the_retries() -> None:
    """The amendment step of a renewal for two years from next month: a schedule made from
    the live subscription, then its phases; a retry (the outcome lost) sends neither again."""
    from datetime import date

    from sf_bridge.plan import ContractTerms, PlanPhase, add_months
    from sf_bridge.provisioning import amendment

    billing = InMemoryBilling()
    billing.add_price("pro_monthly", 5000)
    ctx = _ctx(billing)
    customer = customer_step(ctx, _view(), _customer())
    first = _view().with_changes(customer.changes)
    sub = subscription_step(ctx, first).changes["stripe_subscription_id"]
    today = date(2027, 1, 15)
    start = add_months(today, 1)
    base = make_plan("006000000000002AAA", quantity=5)
    phases = tuple(
        PlanPhase(
            start_date=add_months(start, 12 * n).isoformat(),
            end_date=add_months(start, 12 * (n + 1)).isoformat(),
            items=(replace(base.items[0], quantity=q, unit_amount=a),),
        )
        for n, (q, a) in enumerate(((5, 6000), (8, 6500)))
    )
    plan = replace(
        base,
        intent="renewal",
        items=phases[0].items,
        phases=phases,
        contract=ContractTerms(start_date=start.isoformat(), end_date=phases[-1].end_date),
    )
    deal = replace(
        _view(plan=plan.to_dict(), opportunity_id=plan.opportunity_id),
        stripe_customer_id=first.with_changes(customer.changes).stripe_customer_id,
        stripe_subscription_id=str(sub),
        current_step="subscription",
    )

    class Accounts:
        def live_subscription(self, _deal: DealView) -> amendment.LiveSubscription:
            return amendment.LiveSubscription(1, OPP, str(sub), None)

        def earlier_in_flight(self, _deal: DealView) -> int | None:
            return None

    ctx.today = lambda: today
    ctx.accounts = Accounts()
    deal = replace(deal, stripe_subscription_id=None)
    outcome = subscription_step(ctx, deal)
    assert outcome.changes["stripe_schedule_id"] == billing.subscriptions[str(sub)].schedule
    assert outcome.skip_to == "entitlements"
    schedule = billing.schedules[str(outcome.changes["stripe_schedule_id"])]
    assert [q for phase in schedule.phases for _price, q in phase.items] == [3, 5, 8]
    assert schedule.end_behavior == "cancel"
    assert amendment.MARKERS_KEY in schedule.metadata
    again = subscription_step(ctx, deal)
    assert again.detail["applied"] == "before"
    assert (billing.calls["schedule_subscription"], billing.calls["update_schedule"]) == (1, 1)
    assert billing.subscriptions[str(sub)].items[0].quantity == 3  # nothing changes now

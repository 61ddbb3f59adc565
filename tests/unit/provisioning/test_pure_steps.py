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

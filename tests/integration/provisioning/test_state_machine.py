"""The deal state machine on a real database with the in-memory billing gateway."""

from __future__ import annotations

from sqlalchemy import func, select

from sf_bridge.db.models import Customer, EntitlementGrant, StepAttempt
from sf_bridge.errors import BillingRejected, RateLimitedError, TransientError
from sf_bridge.provisioning.queue import enqueue_opportunities
from tests.fixtures.provisioning import Harness, drain, make_plan, settled


def _enqueue(h: Harness, *ids: str) -> list[str]:
    with h.session_factory() as session, session.begin():
        return enqueue_opportunities(session, list(ids), source="test")


def test_paid_send_invoice_deal_goes_all_the_way(harness: Harness) -> None:
    h = harness
    h.add_opportunity(make_plan("006000000000001AAA"))
    assert _enqueue(h, "006000000000001AAA") == ["006000000000001AAA"]
    drain(h.worker(), settled(h, "006000000000001AAA"))

    deal = h.deal("006000000000001AAA")
    assert deal.status == "done", deal.last_error
    billing = h.billing
    assert len(billing.customers) == 1  # type: ignore[union-attr]
    assert len(billing.subscriptions) == 1  # type: ignore[union-attr]
    invoice = billing.invoices[deal.stripe_invoice_id]  # type: ignore[union-attr,index]
    assert invoice.status == "open"
    assert deal.hosted_invoice_url
    assert deal.invoice_pdf
    assert deal.invoice_due_at
    assert deal.invoice_status == "open"
    assert deal.mapping_version == "v1"
    assert h.crm.written["006000000000001AAA"] == {
        "Provisioning_Status__c": "Provisioned",
        "Stripe_Customer_Id__c": deal.stripe_customer_id,
        "Stripe_Subscription_Id__c": deal.stripe_subscription_id,
        "Invoice_URL__c": deal.hosted_invoice_url,
        "Provisioning_Error__c": None,
    }
    with h.session_factory() as session:
        steps = list(
            session.execute(
                select(StepAttempt.step)
                .where(StepAttempt.deal_id == deal.id)
                .order_by(StepAttempt.id)
            ).scalars()
        )
        grants = session.execute(select(func.count()).select_from(EntitlementGrant)).scalar()
    assert steps == [
        "fetch",
        "map",
        "customer",
        "subscription",
        "invoice",
        "entitlements",
        "write_back",
    ]
    assert grants == 2


def test_second_deal_of_an_account_reuses_its_customer(harness: Harness) -> None:
    h = harness
    for opp in ("006000000000001AAA", "006000000000002AAA", "006000000000003AAA"):
        h.add_opportunity(make_plan(opp))
    _enqueue(h, "006000000000001AAA", "006000000000002AAA", "006000000000003AAA")
    drain(h.worker(), settled(h, "006000000000001AAA", "006000000000002AAA", "006000000000003AAA"))
    assert set(h.statuses().values()) == {"done"}
    assert len(h.billing.customers) == 1  # type: ignore[union-attr]
    assert len(h.billing.subscriptions) == 3  # type: ignore[union-attr]
    with h.session_factory() as session:
        assert session.execute(select(func.count()).select_from(Customer)).scalar() == 1


def test_custom_plan_creates_no_stripe_objects_and_grants_variable_entitlements(
    harness: Harness,
) -> None:
    h = harness
    plan = make_plan("006000000000009AAA", custom=True)
    h.add_opportunity(plan)
    _enqueue(h, "006000000000009AAA")
    drain(h.worker(billing=None), settled(h, "006000000000009AAA"))
    deal = h.deal("006000000000009AAA")
    assert deal.status == "done", deal.last_error
    assert deal.stripe_subscription_id is None
    assert deal.stripe_invoice_id is None
    with h.session_factory() as session:
        grants = {
            g.feature: g.value
            for g in session.execute(
                select(EntitlementGrant).where(EntitlementGrant.deal_id == deal.id)
            ).scalars()
        }
    assert grants == {"sso": 1, "seats": 3}


def test_transient_errors_retry_then_complete(harness: Harness) -> None:
    h = harness
    billing = h.billing
    billing.fail_next("create_customer", TransientError("Stripe 500"))  # type: ignore[union-attr]
    billing.fail_next(  # type: ignore[union-attr]
        "create_subscription", RateLimitedError("429", retry_after=0.001), after_effect=True
    )
    h.add_opportunity(make_plan("006000000000001AAA"))
    _enqueue(h, "006000000000001AAA")
    drain(h.worker(), settled(h, "006000000000001AAA"))
    deal = h.deal("006000000000001AAA")
    assert deal.status == "done"
    assert len(billing.customers) == 1  # type: ignore[union-attr]
    assert len(billing.subscriptions) == 1  # type: ignore[union-attr]
    with h.session_factory() as session:
        outcomes = list(
            session.execute(select(StepAttempt.step, StepAttempt.outcome).order_by(StepAttempt.id))
        )
    assert ("customer", "retry") in outcomes
    assert ("subscription", "retry") in outcomes
    with h.session_factory() as session:
        tries = list(
            session.execute(
                select(StepAttempt.idempotency_key, StepAttempt.detail)
                .where(StepAttempt.step == "subscription")
                .order_by(StepAttempt.id)
            ).all()
        )
    # the first try's response was lost after Stripe created the subscription: the failed
    # attempt keeps its key, and the retry finds the subscription instead of creating one
    assert len(tries) == 2
    assert tries[0][0] is not None
    assert tries[0][0].startswith("sfb-subscription-")
    assert tries[1][1]["found_by"] == "list"  # the customer's subscriptions, not search


def test_permanent_error_parks_with_reason(harness: Harness) -> None:
    h = harness
    h.billing.fail_next(  # type: ignore[union-attr]
        "create_subscription",
        BillingRejected("Invalid currency: xyz", hint="fix the currency in the mappings"),
    )
    h.add_opportunity(make_plan("006000000000001AAA"))
    _enqueue(h, "006000000000001AAA")
    drain(h.worker(), settled(h, "006000000000001AAA"))
    deal = h.deal("006000000000001AAA")
    assert deal.status == "needs_attention"
    assert deal.current_step == "subscription"
    assert deal.last_error == "Invalid currency: xyz Fix: fix the currency in the mappings"
    # Salesforce users see it on the opportunity, once.
    assert h.crm.written["006000000000001AAA"] == {
        "Provisioning_Status__c": "Needs attention",
        "Provisioning_Error__c": f"billing_rejected: {deal.last_error}",
    }
    calls = h.crm.calls
    h.worker().run_once()
    assert h.crm.calls == calls
    assert h.deal("006000000000001AAA").writeback_pending is False


def test_transient_errors_park_after_max_attempts(harness: Harness) -> None:
    h = harness
    for _ in range(10):
        h.billing.fail_next("create_customer", TransientError("Stripe 503"))  # type: ignore[union-attr]
    h.add_opportunity(make_plan("006000000000001AAA"))
    _enqueue(h, "006000000000001AAA")
    drain(h.worker(), settled(h, "006000000000001AAA"))
    deal = h.deal("006000000000001AAA")
    assert deal.status == "needs_attention"
    assert deal.attempts == 6
    assert deal.last_error
    assert deal.last_error.startswith("Gave up after 6 attempts")

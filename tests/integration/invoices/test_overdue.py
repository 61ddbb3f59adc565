"""The overdue policy with a controllable clock, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.billing.memory import InMemoryBilling
from sf_bridge.crm.port import InMemoryCrm
from sf_bridge.db.models import CANCELLED, Customer, Deal, EntitlementGrant
from sf_bridge.entitlements.ledger import effective_entitlements
from sf_bridge.errors import TransientError
from sf_bridge.invoices.overdue import apply_overdue_policy
from sf_bridge.mapping.model import WriteBackFields
from sf_bridge.plan import EntitlementValue
from tests.fixtures.api import STANDARD_ENTITLEMENTS, seed_deal
from tests.integration.invoices.conftest import DUE, add_subscription

FIELDS = WriteBackFields(status="SF_Bridge_Status__c", error="SF_Bridge_Error__c")
OPP = "006000000000001AAA"


def _at(day: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, 9, 0, tzinfo=UTC)


def _deal(session_factory: sessionmaker[Session], deal_id: int) -> Deal:
    with session_factory() as session:
        deal = session.get_one(Deal, deal_id)
        deal.events  # noqa: B018
        return deal


def test_open_invoice_past_grace_cancels_revokes_records_and_writes_back(
    session_factory: sessionmaker[Session], billing: InMemoryBilling
) -> None:
    _, deal_id = seed_deal(session_factory, STANDARD_ENTITLEMENTS, invoice_due_at=DUE)
    add_subscription(billing, "sub_test_2", "in_test_2")
    billing.invoices["in_test_2"] = replace(billing.invoices["in_test_2"], status="paid")
    _, paid_deal_id = seed_deal(
        session_factory,
        (EntitlementValue("seats", "seats", 5, source="add-on"),),
        opportunity_id="006000000000002AAA",
        subscription_id="sub_test_2",
        invoice_id="in_test_2",
        invoice_status="paid",
        invoice_due_at=DUE,
    )
    crm = InMemoryCrm()

    def run(now: datetime) -> list:
        return apply_overdue_policy(
            session_factory,
            billing,
            crm,
            now=now,
            grace_days=14,
            dry_run=False,
            write_back=FIELDS,
        )

    assert run(_at(14)) == []  # 13 days past due: still in grace
    assert billing.subscriptions["sub_test_1"].status == "active"

    actions = run(_at(16))
    assert [(a.deal_id, a.action, a.days_overdue, a.grants_revoked) for a in actions] == [
        (deal_id, "cancelled", 15, 3)
    ]
    assert actions[0].written_back is True
    assert billing.subscriptions["sub_test_1"].status == "canceled"
    assert billing.subscriptions["sub_test_2"].status == "active"

    deal = _deal(session_factory, deal_id)
    assert deal.status == CANCELLED
    assert deal.invoice_status == "open"
    assert [e.kind for e in deal.events] == ["subscription_cancelled"]
    assert "unpaid 15 days" in deal.events[0].message
    assert crm.written[OPP]["SF_Bridge_Status__c"] == "Cancelled"
    assert "in_test_1 unpaid 15 days" in crm.written[OPP]["SF_Bridge_Error__c"]

    with session_factory() as session:
        customer = session.scalars(select(Customer)).one()
        effective = effective_entitlements(session, customer.sf_account_id)
    assert {f: e.value for f, e in effective.items()} == {"seats": 5}  # the paid deal's grant
    assert _deal(session_factory, paid_deal_id).status == "done"

    assert run(_at(20)) == []  # decided once
    assert billing.calls["cancel_subscription"] == 1


def test_dry_run_changes_nothing(
    session_factory: sessionmaker[Session], billing: InMemoryBilling
) -> None:
    _, deal_id = seed_deal(session_factory, STANDARD_ENTITLEMENTS, invoice_due_at=DUE)
    crm = InMemoryCrm()
    actions = apply_overdue_policy(
        session_factory, billing, crm, now=_at(30), grace_days=14, dry_run=True, write_back=FIELDS
    )
    assert [(a.action, a.written_back) for a in actions] == [("would_cancel", None)]
    assert billing.calls["cancel_subscription"] == 0
    assert billing.subscriptions["sub_test_1"].status == "active"
    assert crm.written == {}
    assert _deal(session_factory, deal_id).status == "done"
    with session_factory() as session:
        assert all(g.active for g in session.scalars(select(EntitlementGrant)))


def test_invoice_paid_meanwhile_is_recorded_not_cancelled(
    session_factory: sessionmaker[Session], billing: InMemoryBilling
) -> None:
    _, deal_id = seed_deal(session_factory, STANDARD_ENTITLEMENTS, invoice_due_at=DUE)
    billing.invoices["in_test_1"] = replace(billing.invoices["in_test_1"], status="paid")
    actions = apply_overdue_policy(
        session_factory, billing, None, now=_at(30), grace_days=14, dry_run=False
    )
    assert [a.action for a in actions] == ["no_longer_open"]
    deal = _deal(session_factory, deal_id)
    assert (deal.status, deal.invoice_status) == ("done", "paid")
    assert billing.calls["cancel_subscription"] == 0


def test_due_date_moved_in_stripe_postpones_the_decision(
    session_factory: sessionmaker[Session], billing: InMemoryBilling
) -> None:
    _, deal_id = seed_deal(session_factory, STANDARD_ENTITLEMENTS, invoice_due_at=DUE)
    extended = datetime(2026, 11, 25, tzinfo=UTC)
    billing.invoices["in_test_1"] = replace(billing.invoices["in_test_1"], due_date=extended)
    actions = apply_overdue_policy(
        session_factory, billing, None, now=_at(20), grace_days=14, dry_run=False
    )
    assert [a.action for a in actions] == ["not_yet_due"]
    assert _deal(session_factory, deal_id).invoice_due_at == extended
    assert (
        apply_overdue_policy(
            session_factory, billing, None, now=_at(20), grace_days=14, dry_run=False
        )
        == []
    )


def test_a_failed_cancellation_is_retried_on_the_next_run(
    session_factory: sessionmaker[Session], billing: InMemoryBilling
) -> None:
    _, deal_id = seed_deal(session_factory, STANDARD_ENTITLEMENTS, invoice_due_at=DUE)
    billing.fail_next("cancel_subscription", TransientError("Stripe answered 500."))
    first = apply_overdue_policy(
        session_factory, billing, None, now=_at(20), grace_days=14, dry_run=False
    )
    assert [(a.action, a.error) for a in first] == [("failed", "Stripe answered 500.")]
    with session_factory() as session:
        assert all(g.active for g in session.scalars(select(EntitlementGrant)))
    second = apply_overdue_policy(
        session_factory, billing, None, now=_at(21), grace_days=14, dry_run=False
    )
    assert [a.action for a in second] == ["cancelled"]
    assert _deal(session_factory, deal_id).status == CANCELLED


def test_without_stripe_there_is_nothing_to_do(session_factory: sessionmaker[Session]) -> None:
    seed_deal(session_factory, STANDARD_ENTITLEMENTS, invoice_due_at=DUE)
    assert (
        apply_overdue_policy(session_factory, None, None, now=_at(30), grace_days=14, dry_run=False)
        == []
    )

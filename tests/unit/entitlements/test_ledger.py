"""The grant ledger: idempotent grants, revocation by subscription, combined entitlements."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.models import CANCELLED, Customer, Deal, EntitlementGrant
from sf_bridge.entitlements.ledger import (
    effective_entitlements,
    grant_deal_entitlements,
    revoke_subscription_grants,
)
from sf_bridge.plan import EntitlementValue


def _deal(session: Session, customer: Customer, opportunity_id: str) -> Deal:
    deal = Deal(opportunity_id=opportunity_id, account_id=customer.sf_account_id)
    deal.customer_id = customer.id
    session.add(deal)
    session.flush()
    return deal


def _customer(session: Session) -> Customer:
    customer = Customer(
        sf_account_id="001000000000001AAA", customer_key="001000000000001AAA/USD", name="Acme"
    )
    session.add(customer)
    session.flush()
    return customer


FIRST = (
    EntitlementValue("sso", "flag", True, source="plan enterprise"),
    EntitlementValue("api_calls", "limit", 10_000, unit="calls/month", source="plan enterprise"),
    EntitlementValue("seats", "seats", 25, source="Opportunity.Seats__c"),
)
SECOND = (
    EntitlementValue("sso", "flag", False, source="plan team"),
    EntitlementValue("api_calls", "limit", 5_000, unit="calls/month", source="add-on extra"),
    EntitlementValue("seats", "seats", 5, source="add-on seats x 5"),
    EntitlementValue("audit_log", "flag", True, source="add-on audit"),
)


def test_grants_are_idempotent_per_deal_and_feature(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        customer = _customer(session)
        deal = _deal(session, customer, "006000000000001AAA")
        assert (
            grant_deal_entitlements(
                session, deal=deal, customer=customer, entitlements=FIRST, subscription_id="sub_1"
            )
            == 3
        )
        assert (
            grant_deal_entitlements(
                session, deal=deal, customer=customer, entitlements=FIRST, subscription_id="sub_1"
            )
            == 0
        )
        count = session.scalar(select(func.count()).select_from(EntitlementGrant))
        assert count == 3


def test_effective_entitlements_combine_deals_and_cancellation_revokes_only_its_grants(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        customer = _customer(session)
        first = _deal(session, customer, "006000000000001AAA")
        second = _deal(session, customer, "006000000000002AAA")
        grant_deal_entitlements(
            session, deal=first, customer=customer, entitlements=FIRST, subscription_id="sub_1"
        )
        grant_deal_entitlements(
            session, deal=second, customer=customer, entitlements=SECOND, subscription_id="sub_2"
        )
        effective = effective_entitlements(session, customer.sf_account_id)
        assert effective["sso"].value is True
        assert effective["api_calls"].value == 15_000
        assert effective["api_calls"].unit == "calls/month"
        assert effective["seats"].value == 30
        assert [g.opportunity_id for g in effective["seats"].granted_by] == [
            "006000000000001AAA",
            "006000000000002AAA",
        ]

        assert revoke_subscription_grants(session, "sub_1", "subscription cancelled") == 3
        assert revoke_subscription_grants(session, "sub_1", "again") == 0
        effective = effective_entitlements(session, customer.sf_account_id)
        assert effective["sso"].value is False
        assert effective["sso"].access is False
        assert effective["api_calls"].value == 5_000
        assert effective["seats"].value == 5
        assert effective["audit_log"].access is True
        assert {g.deal_id for e in effective.values() for g in e.granted_by} == {second.id}


def test_revoked_grant_is_not_granted_again_by_a_replay(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        customer = _customer(session)
        deal = _deal(session, customer, "006000000000001AAA")
        grant_deal_entitlements(
            session, deal=deal, customer=customer, entitlements=FIRST, subscription_id="sub_1"
        )
        revoke_subscription_grants(session, "sub_1", "cancelled")
        assert (
            grant_deal_entitlements(
                session, deal=deal, customer=customer, entitlements=FIRST, subscription_id="sub_1"
            )
            == 0
        )
        assert effective_entitlements(session, customer.sf_account_id) == {}


def test_a_deal_cancelled_before_its_grant_records_it_revoked(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session, session.begin():
        customer = _customer(session)
        deal = _deal(session, customer, "006000000000001AAA")
        deal.status = CANCELLED
        granted = grant_deal_entitlements(
            session, deal=deal, customer=customer, entitlements=FIRST, subscription_id="sub_1"
        )
        assert granted == 3
        assert effective_entitlements(session, customer.sf_account_id) == {}
        reasons = session.scalars(select(EntitlementGrant.revoked_reason)).all()
        assert set(reasons) == {"the subscription had ended before the grant"}


def test_each_feature_combines_by_its_rule_and_the_latest_grant_says_which(
    session_factory: sessionmaker[Session],
) -> None:
    def retention(days: int, combine: str | None) -> EntitlementValue:
        return EntitlementValue(
            "data_retention",
            "limit",
            days,
            unit="days",
            source="plan",
            combine=combine,  # type: ignore[arg-type]
        )

    with session_factory() as session, session.begin():
        customer = _customer(session)
        for n, grant in enumerate([retention(365, "max"), retention(30, "max")], 1):
            deal = _deal(session, customer, f"00600000000000{n}AAA")
            grant_deal_entitlements(
                session, deal=deal, customer=customer, entitlements=(grant,), subscription_id=None
            )
        longest = effective_entitlements(session, customer.sf_account_id)["data_retention"]
        assert (longest.value, longest.combine) == (365, "max")
        # A later deal made after the feature went back to adding up: the latest rule applies.
        deal = _deal(session, customer, "006000000000003AAA")
        grant_deal_entitlements(
            session,
            deal=deal,
            customer=customer,
            entitlements=(retention(10, None),),
            subscription_id=None,
        )
        summed = effective_entitlements(session, customer.sf_account_id)["data_retention"]
        assert (summed.value, summed.combine) == (405, "sum")
        rules = session.scalars(select(EntitlementGrant.combine).order_by(EntitlementGrant.id))
        assert list(rules) == ["max", "max", "sum"]

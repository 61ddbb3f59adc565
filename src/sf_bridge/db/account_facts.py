"""What the store knows of an account for the mapping engine (`AccountFacts`): whether one of
its deals has a Stripe subscription, and that deal's plan. The engine reads no database; the
provisioning worker asks here and passes the answer in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm import ids
from sf_bridge.db.models import Deal
from sf_bridge.plan import AccountFacts, ProvisioningPlan


def account_facts(session: Session, account_id: str | None, opportunity_id: str) -> AccountFacts:
    """The account's latest other deal with a subscription gives the facts; without one the
    account has no live subscription. (A subscription cancelled in Stripe is not seen here.)"""
    if not account_id:
        return AccountFacts()
    account = ids.maybe_record_id(str(account_id))
    row = session.execute(
        select(Deal.plan)
        .where(
            Deal.account_id == account,
            Deal.stripe_subscription_id.is_not(None),
            Deal.opportunity_id != ids.maybe_record_id(opportunity_id),
        )
        .order_by(Deal.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return AccountFacts(live_subscription=False)
    plan = row[0]
    name = ProvisioningPlan.from_dict(plan).plan_name if isinstance(plan, dict) else None
    return AccountFacts(live_subscription=True, plan_name=name or None)


def mapper_with_facts(
    session_factory: sessionmaker[Session],
) -> Callable[[dict[str, Any], Any], Any]:
    """The mapping engine, told what the store knows of each deal's account."""

    def mapper(opportunity: dict[str, Any], mappings: Any) -> Any:
        from sf_bridge.mapping.engine import map_opportunity

        with session_factory() as session:
            facts = account_facts(
                session, opportunity.get("AccountId"), str(opportunity.get("Id") or "")
            )
        return map_opportunity(opportunity, mappings, facts)

    return mapper

"""What the store knows of an account for the mapping engine (`AccountFacts`): whether one of
its deals has a Stripe subscription, and that deal's plan. The engine reads no database; the
provisioning worker passes the answer in.

The worker's claim reads the facts of each deal it leases at its map step, in the claim's own
statement (`facts_columns`: two columns of its `RETURNING`), so mapping a deal costs no read
transaction of its own; `account_facts` reads them alone for a deal that was not claimed so
(loaded by id, or mapped outside the worker)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Integer, Table, literal_column, select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm import ids
from sf_bridge.db.models import Deal
from sf_bridge.plan import AccountFacts, ProvisioningPlan

_deals: Table = Deal.__table__  # type: ignore[assignment]

# The claim's RETURNING columns that carry the facts (the other deal's id and its plan).
FACTS_DEAL = "facts_deal_id"
FACTS_PLAN = "facts_plan"


def account_facts(session: Session, account_id: str | None, opportunity_id: str) -> AccountFacts:
    """The account's latest other deal with a subscription gives the facts; without one the
    account has no live subscription. (A subscription cancelled in Stripe is not seen here.)"""
    if not account_id:
        return AccountFacts()
    account = ids.maybe_record_id(str(account_id))
    row = session.execute(
        select(Deal.id, Deal.plan)
        .where(
            Deal.account_id == account,
            Deal.stripe_subscription_id.is_not(None),
            Deal.opportunity_id != ids.maybe_record_id(opportunity_id),
        )
        .order_by(Deal.id.desc())
        .limit(1)
    ).first()
    return facts_of(row[0] if row else None, row[1] if row else None)


def facts_of(other_deal_id: int | None, plan: Any) -> AccountFacts:
    """The facts given by the account's latest other deal with a subscription (None: none)."""
    if other_deal_id is None:
        return AccountFacts(live_subscription=False)
    name = ProvisioningPlan.from_dict(plan).plan_name if isinstance(plan, dict) else None
    return AccountFacts(live_subscription=True, plan_name=name or None)


def facts_columns(deals: Table, when: str) -> list[Any]:
    """For a statement over `deals` (the claim's UPDATE ... RETURNING): the id and plan of the
    latest other deal of each row's account with a subscription, only for the rows where
    the SQL condition `when` holds (NULL for the others, which are not mapped now).

    Written as SQL: SQLAlchemy renders the columns of a RETURNING clause on SQLite without
    their table, also inside a subquery, which would make the correlation compare each
    column with itself; here every column is named with its table."""
    name = deals.name

    def latest(column: str) -> str:
        return (
            f"CASE WHEN {when} THEN (SELECT facts.{column} FROM {name} AS facts"
            f" WHERE facts.account_id = {name}.account_id"
            " AND facts.stripe_subscription_id IS NOT NULL"
            f" AND facts.opportunity_id <> {name}.opportunity_id"
            " ORDER BY facts.id DESC LIMIT 1) END"
        )

    return [
        literal_column(latest("id"), Integer).label(FACTS_DEAL),
        literal_column(latest('"plan"'), deals.c.plan.type).label(FACTS_PLAN),
    ]


def claimed_facts(row: Any, opportunity: dict[str, Any] | None) -> AccountFacts | None:
    """The facts a claim's row carries for its deal, or None when they do not apply to the
    opportunity as snapshotted (its account is not the deal row's, or it names none)."""
    account = (opportunity or {}).get("AccountId")
    if not account or ids.maybe_record_id(str(account)) != row["account_id"]:
        return None
    return facts_of(row[FACTS_DEAL], row[FACTS_PLAN])


class FactsMapper:
    """The mapping engine, told what the store knows of each deal's account: the facts the
    claim read with the deal, else read here in a transaction of their own."""

    takes_facts = True

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    def __call__(
        self, opportunity: dict[str, Any], mappings: Any, facts: AccountFacts | None = None
    ) -> Any:
        from sf_bridge.mapping.engine import map_opportunity

        if facts is None:
            with self._session_factory() as session:
                facts = account_facts(
                    session, opportunity.get("AccountId"), str(opportunity.get("Id") or "")
                )
        return map_opportunity(opportunity, mappings, facts)


def mapper_with_facts(
    session_factory: sessionmaker[Session],
) -> Callable[..., Any]:
    """The mapping engine, told what the store knows of each deal's account."""
    return FactsMapper(session_factory)

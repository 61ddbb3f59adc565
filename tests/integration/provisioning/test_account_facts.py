"""The worker's mapper tells the engine what the store knows of the deal's account: a second
deal selling only add-ons on an account with a subscription maps as an amendment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.account_facts import FactsMapper, account_facts, mapper_with_facts
from sf_bridge.db.models import Deal
from sf_bridge.mapping import Mappings
from sf_bridge.mapping.engine import map_opportunity
from sf_bridge.plan import AccountFacts, ProvisioningPlan
from sf_bridge.provisioning.steps import StepContext, map_step
from sf_bridge.provisioning.store import DealStore
from tests.fixtures.mapping import make_opportunity, opportunity_line

ACCOUNT = "001Hs00009TestAAAQ"
FIRST = "006Hs00009FrstAAAQ"
SECOND = "006Hs00009ScndAAAQ"


def first_deal(mappings: Mappings, subscription: str | None) -> Deal:
    opportunity = make_opportunity(
        [opportunity_line("00kF1", "SB-ENT-M", 1.0)], opportunity_id=FIRST
    )
    mapped = map_opportunity(opportunity, mappings)
    assert isinstance(mapped, ProvisioningPlan)
    return Deal(
        opportunity_id=FIRST,
        account_id=ACCOUNT,
        status="done" if subscription else "needs_attention",
        opportunity=opportunity,
        plan=mapped.to_dict(),
        stripe_subscription_id=subscription,
    )


def test_the_account_facts_come_from_its_deals_with_a_subscription(
    session_factory: sessionmaker[Session], example_mappings: Mappings
) -> None:
    with session_factory() as session:
        assert account_facts(session, ACCOUNT, SECOND) == AccountFacts(live_subscription=False)
        assert account_facts(session, None, SECOND) == AccountFacts()
    with session_factory() as session, session.begin():
        session.add(first_deal(example_mappings, "sub_1"))
    with session_factory() as session:
        assert account_facts(session, ACCOUNT, SECOND) == AccountFacts(True, "enterprise")
        # the deal itself does not count
        assert account_facts(session, ACCOUNT, FIRST) == AccountFacts(live_subscription=False)


def test_a_second_deal_of_add_ons_maps_as_an_amendment(
    session_factory: sessionmaker[Session], example_mappings: Mappings
) -> None:
    second = make_opportunity(
        [opportunity_line("00kS1", "SB-SEATS-M", 20.0)], opportunity_id=SECOND
    )
    mapper = mapper_with_facts(session_factory)
    assert [e.code for e in mapper(second, example_mappings)] == ["no_plan"]
    with session_factory() as session, session.begin():
        session.add(first_deal(example_mappings, "sub_1"))
    plan = mapper(second, example_mappings)
    assert isinstance(plan, ProvisioningPlan), [str(e) for e in plan]
    assert (plan.intent, plan.plan_name, plan.amendment_lines) == (
        "amendment",
        "enterprise",
        "additions",
    )
    assert [(i.name, i.quantity) for i in plan.items] == [("extra_seats", 20)]


def test_the_claim_brings_the_facts_of_the_deals_it_leases_at_their_map_step(
    session_factory: sessionmaker[Session], example_mappings: Mappings
) -> None:
    """The claim's statement carries the account's facts of a deal about to be mapped, so the
    mapper reads no database: mapping the claimed deal opens no session."""
    second = make_opportunity(
        [opportunity_line("00kS1", "SB-SEATS-M", 20.0)], opportunity_id=SECOND
    )
    with session_factory() as session, session.begin():
        session.add(first_deal(example_mappings, "sub_1"))
        session.add(
            Deal(
                opportunity_id=SECOND,
                account_id=ACCOUNT,
                status="fetched",
                current_step="map",
                opportunity=second,
            )
        )
    store = DealStore(
        session_factory, owner="w", lease=timedelta(seconds=30), clock=lambda: datetime.now(UTC)
    )
    (view,) = store.claim(("map",), 10)
    assert view.account_facts == AccountFacts(True, "enterprise")

    def no_session() -> Session:
        raise AssertionError("the mapper read the database")

    mapper = FactsMapper(no_session)  # type: ignore[arg-type]
    ctx = StepContext(billing=None, mappings_loader=lambda: example_mappings, mapper=mapper)
    plan = map_step(ctx, view).changes["plan"]
    assert (plan["intent"], plan["plan_name"]) == ("amendment", "enterprise")


def test_a_claim_at_another_step_reads_no_facts(
    session_factory: sessionmaker[Session], example_mappings: Mappings
) -> None:
    with session_factory() as session, session.begin():
        session.add(first_deal(example_mappings, "sub_1"))
    with session_factory() as session, session.begin():
        session.execute(update(Deal).values(current_step="write_back", status="provisioned"))
    store = DealStore(
        session_factory, owner="w", lease=timedelta(seconds=30), clock=lambda: datetime.now(UTC)
    )
    (view,) = store.claim(("write_back",), 10)
    assert view.account_facts is None

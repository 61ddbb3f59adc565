"""`sf-bridge run` end to end on deals real orgs produce: a deal moved out of its won stage
before the worker fetched it, historical won deals below the provisioning floor, and data loads
that add an opportunity's line items after the opportunity. The sandbox org, the real Salesforce
clients, the worker and the Stripe emulator."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.models import Deal, DealEvent
from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from sf_bridge.sandbox.stripe_emulator import StripeEmulator
from tests.integration.intake import test_end_to_end as e2e
from tests.integration.intake.conftest import wait_until
from tests.integration.intake.test_end_to_end import environment, start_worker, statuses, team_deal

# The end-to-end fixtures: the example mappings, the org prepared for them, the Stripe catalog.
mappings = e2e.mappings
org = e2e.org
stripe = e2e.stripe


def deal_row(session_factory: sessionmaker[Session], opportunity_id: str) -> Deal:
    with session_factory() as session:
        return session.execute(
            select(Deal).where(Deal.opportunity_id == opportunity_id)
        ).scalar_one()


def event_kinds(session_factory: sessionmaker[Session], opportunity_id: str) -> list[str]:
    with session_factory() as session:
        return list(
            session.execute(
                select(DealEvent.kind)
                .join(Deal, Deal.id == DealEvent.deal_id)
                .where(Deal.opportunity_id == opportunity_id)
                .order_by(DealEvent.id)
            ).scalars()
        )


def stripe_objects(emulator: StripeEmulator) -> dict[str, int]:
    return {kind: emulator.count(kind) for kind in ("customer", "subscription", "invoice")}


def test_a_deal_reverted_before_its_fetch_is_skipped_then_provisioned_when_won_again(
    org: SalesforceSandbox, stripe: StripeEmulator, db_url: str, session_factory: Any
):
    worker = start_worker(environment(org, stripe, db_url))
    try:
        opp = team_deal(org, "Reverted")
        org.close_won_and_revert(opp)
        wait_until(lambda: statuses(session_factory).get(opp) == "skipped", 10, "skipped")
        deal = deal_row(session_factory, opp)
        assert deal.last_error_code == "not_won"
        assert "no longer won" in (deal.last_error or "")
        assert deal.current_step is None
        assert "skipped" in event_kinds(session_factory, opp)
        assert stripe_objects(stripe) == {"customer": 0, "subscription": 0, "invoice": 0}
        assert org.get_opportunity(opp).get("SF_Bridge_Status__c") != "Provisioned"

        org.close_won(opp)  # won again, for good this time
        wait_until(lambda: statuses(session_factory).get(opp) == "done", 20, "provisioned")
    finally:
        assert worker.stop()
    assert org.get_opportunity(opp)["SF_Bridge_Status__c"] == "Provisioned"
    assert stripe_objects(stripe) == {"customer": 1, "subscription": 1, "invoice": 1}

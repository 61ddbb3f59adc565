"""A deal provisioned with 5 seats, reopened in the sandbox org and closed again with 40, then
replayed: one update of its subscription in the Stripe emulator to 40, its grants 40, the
result written back onto the opportunity. The real Salesforce client, mapping engine, Stripe
SDK and worker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.billing.stripe_gateway import StripeGateway
from sf_bridge.config import Settings
from sf_bridge.crm.salesforce import SalesforceCrm
from sf_bridge.db.models import Deal, EntitlementGrant
from sf_bridge.mapping import load_mappings
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.replay import replay
from sf_bridge.provisioning.retry import request_retrier
from sf_bridge.provisioning.store import mark_changed_after_provisioning, mark_unwon
from sf_bridge.provisioning.worker import Worker
from sf_bridge.sandbox.salesforce_org import SalesforceSandbox, prepare_for_mappings
from sf_bridge.sandbox.stripe_emulator import StripeEmulator
from tests.fixtures.provisioning import FAST_RETRY, drain
from tests.integration.intake.conftest import API_VERSION, credentials_for

MAPPINGS = Path(__file__).resolve().parents[3] / "mappings"


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    sandbox = SalesforceSandbox(port=0, long_poll_seconds=1.0).start()
    yield sandbox
    sandbox.stop()


def _deal(factory: sessionmaker[Session], opp: str) -> Deal:
    with factory() as session:
        return session.execute(select(Deal).where(Deal.opportunity_id == opp)).scalar_one()


def _settled(factory: sessionmaker[Session], opp: str, *statuses: str) -> Any:
    def check() -> bool:
        deal = _deal(factory, opp)
        return deal.status in statuses and not deal.writeback_pending

    return check


def test_reopened_deal_closed_with_40_seats_instead_of_5_is_amended_to_40(
    org: SalesforceSandbox, session_factory: sessionmaker[Session]
) -> None:
    mappings = load_mappings(MAPPINGS)
    prepare_for_mappings(org, mappings)
    with StripeEmulator() as emu:
        emu.seed_catalog(mappings.catalog_prices())
        billing = StripeGateway(emu.api_key, api_base=emu.url, retry=request_retrier(FAST_RETRY))
        crm = SalesforceCrm(credentials_for(org), api_version=API_VERSION, fields=mappings)
        settings = Settings(SF_BRIDGE_WORKER_CONCURRENCY=2, SF_BRIDGE_MAX_ATTEMPTS=6)  # type: ignore[call-arg]
        worker = Worker(
            settings,
            session_factory,
            billing,
            crm,
            lambda: mappings,
            policy=FAST_RETRY,
            lease=timedelta(seconds=30),
        )
        account = org.create_account("Reopen Co", Billing_Email__c="ap@reopen.example")
        opp = org.create_opportunity(
            account,
            "Reopen Co - Team",
            [{"product_code": "SB-TEAM-M", "quantity": 5, "unit_price": 15.0}],
            stage="Closed Won",
            currency="USD",
            Payment_Method__c="Invoice",
            Payment_Terms__c="Net 30",
        )
        with session_factory() as session, session.begin():
            enqueue_opportunities(session, [opp], source="test")
        drain(worker, _settled(session_factory, opp, "done", "needs_attention"))
        first = _deal(session_factory, opp)
        assert first.status == "done", first.last_error
        sub_id = first.stripe_subscription_id
        assert sub_id is not None
        items = emu.get(sub_id)["items"]["data"]
        assert [i["quantity"] for i in items] == [5]

        # reopened (the intake records it), closed again with 40 seats
        org.lose_deal(opp, stage="Negotiation/Review")
        with session_factory() as session, session.begin():
            mark_unwon(session, [opp], reason="left its won stage", source="test")
        drain(worker, _settled(session_factory, opp, "needs_attention"))
        [line] = org.store.children("OpportunityLineItem", "OpportunityId", opp)
        org.store.update("OpportunityLineItem", line["Id"], {"Quantity": 40.0}, as_api=False)
        org.close_won(opp)
        with session_factory() as session, session.begin():
            assert mark_changed_after_provisioning(session, [opp], source="test") == [opp]
        updates_before = emu.stats.count("POST /v1/subscriptions/{id}")

        replay(session_factory, [opp], mappings=mappings, crm=crm)
        drain(worker, _settled(session_factory, opp, "done", "needs_attention"))
        deal = _deal(session_factory, opp)
        assert deal.status == "done", deal.last_error
        assert emu.count("subscription") == 1
        assert [i["quantity"] for i in emu.get(sub_id)["items"]["data"]] == [40]
        assert emu.stats.count("POST /v1/subscriptions/{id}") == updates_before + 1
        with session_factory() as session:
            grants = session.scalars(
                select(EntitlementGrant).where(
                    EntitlementGrant.deal_id == deal.id,
                    EntitlementGrant.active.is_(True),
                    EntitlementGrant.feature == "seats",
                )
            ).all()
        assert [g.value for g in grants] == [40]
        written = org.get_opportunity(opp)
        assert written["SF_Bridge_Status__c"] == "Provisioned"
        assert written["Stripe_Subscription_Id__c"] == sub_id

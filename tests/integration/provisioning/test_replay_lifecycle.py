"""`replay` on a deal in the lifecycle after its first close: one no longer won (`unwon`,
parked `unwon_after_provisioning`, or with a cancellation that failed), being cancelled or
cancelled is never sent back to the fetch step (that would provision a lost deal again). The
replay says what to run instead; `replay --failed` passes such deals and says so. Through the
real Stripe SDK against the emulator, and the CLI against the sandbox org."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from sf_bridge.billing.stripe_gateway import StripeGateway
from sf_bridge.cli import app
from sf_bridge.config import Settings, get_settings
from sf_bridge.crm.salesforce import SalesforceCrm
from sf_bridge.db.models import Deal, DealEvent
from sf_bridge.mapping import load_mappings
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.replay import ReplayOutcome, replay, replay_refusal
from sf_bridge.provisioning.retry import request_retrier
from sf_bridge.provisioning.store import mark_unwon, queue_cancel
from sf_bridge.provisioning.worker import Worker
from sf_bridge.sandbox.salesforce_org import SalesforceSandbox, prepare_for_mappings
from sf_bridge.sandbox.stripe_emulator import StripeEmulator
from tests.fixtures.provisioning import FAST_RETRY, Harness, drain, make_plan, settled
from tests.integration.intake.conftest import API_VERSION, credentials_for

MAPPINGS = Path(__file__).resolve().parents[3] / "mappings"


def _provision(h: Harness, opp: str) -> int:
    h.add_opportunity(make_plan(opp))
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [opp], source="test")
    drain(h.worker(), settled(h, opp))
    deal = h.deal(opp)
    assert deal.status == "done", deal.last_error
    return deal.id


def _story(factory: sessionmaker[Session], deal_id: int) -> list[str]:
    with factory() as session:
        return list(
            session.scalars(
                select(DealEvent.kind).where(DealEvent.deal_id == deal_id).order_by(DealEvent.id)
            )
        )


def _refused(h: Harness, opp: str, status: str, *said: str, failed: bool = False) -> None:
    """A replay of the deal (named, or with --failed) changes nothing and says why."""
    before = h.deal(opp)
    assert before.status == status
    story = _story(h.session_factory, before.id)
    outcomes: list[ReplayOutcome] = replay(h.session_factory, [opp], crm=h.crm)
    if failed:
        outcomes += replay(h.session_factory, failed=True, crm=h.crm)
    assert outcomes
    for outcome in outcomes:
        assert (outcome.requeued, outcome.refused) == (False, True), outcome
        for text in said:
            assert text in outcome.message, outcome.message
    after = h.deal(opp)
    assert (after.status, after.current_step, after.last_error_code) == (
        before.status,
        before.current_step,
        before.last_error_code,
    )
    assert _story(h.session_factory, before.id) == story  # nothing recorded either


def test_replay_refuses_deals_no_longer_won_or_being_cancelled(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000301AAA"
    deal_id = _provision(h, opp)
    subscriptions = emu.count("subscription")

    # The intake recorded that it left its won stage; the policy has not run yet (the
    # opportunity as Salesforce returns it may say won again: the intake decides, not replay).
    with h.session_factory() as session, session.begin():
        assert mark_unwon(session, [opp], reason="Moved to Closed Lost.", source="test") == [opp]
    _refused(h, opp, "unwon", f"sf-bridge deals cancel {deal_id}", f"deals keep {deal_id}")

    # Parked by the `review` policy: `--failed` passes it too, and says so.
    drain(h.worker(), lambda: h.deal(opp).status == "needs_attention")
    _refused(
        h,
        opp,
        "needs_attention",
        f"sf-bridge deals cancel {deal_id}",
        f"sf-bridge deals keep {deal_id}",
        failed=True,
    )

    with h.session_factory() as session, session.begin():
        assert queue_cancel(session, deal_id, reason="lost", actor="ana")
    _refused(h, opp, "cancelling", "being cancelled")

    drain(h.worker(), lambda: h.deal(opp).status == "cancelled")
    _refused(h, opp, "cancelled", "recorded by the intake")
    assert emu.count("subscription") == subscriptions
    assert emu.get(h.deal(opp).stripe_subscription_id)["status"] == "canceled"


def test_replay_failed_passes_a_deal_whose_cancellation_failed_and_replays_the_others(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h = stripe_harness
    stuck, other = "006000000000302AAA", "006000000000303AAA"
    stuck_id = _provision(h, stuck)
    with h.session_factory() as session, session.begin():
        deal = session.get_one(Deal, stuck_id)
        deal.status, deal.current_step = "needs_attention", "cancel"
        deal.last_error_code, deal.last_error = "cancel_failed", "Cancelling the deal failed."
    h.add_opportunity(make_plan(other))
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [other], source="test")
        parked = session.scalars(select(Deal).where(Deal.opportunity_id == other)).one()
        parked.status, parked.current_step = "needs_attention", "map"
        parked.last_error_code = "mapping_error"

    outcomes = {o.opportunity_id: o for o in replay(h.session_factory, failed=True, crm=h.crm)}
    assert (outcomes[stuck].refused, outcomes[stuck].requeued) == (True, False)
    assert f"sf-bridge deals cancel {stuck_id}" in outcomes[stuck].message
    assert (outcomes[other].refused, outcomes[other].requeued) == (False, True)
    assert h.deal(stuck).status == "needs_attention"


def test_the_console_and_the_cli_share_what_is_replayable() -> None:
    from sf_bridge.console import actions

    assert actions.replay_refusal is replay_refusal
    deal = Deal(id=7, opportunity_id="006000000000399AAA", status="retrying")
    assert replay_refusal(deal) is None
    for status in ("unwon", "cancelling", "cancelled", "done", "scheduled", "skipped"):
        deal.status = status
        assert replay_refusal(deal) is not None, status
    deal.status, deal.last_error_code = "needs_attention", "changed_after_provisioning"
    assert replay_refusal(deal) is None  # replayed as an amendment of its own subscription
    deal.last_error_code = "skipped_by_someone"
    deal.status = "skipped"
    assert replay_refusal(deal, include_skipped=True) is None


# -- the CLI, reading the opportunity from the sandbox org ----------------------------------


@pytest.fixture
def org(monkeypatch: pytest.MonkeyPatch, db_url: str) -> Iterator[SalesforceSandbox]:
    """The sandbox org, and the CLI's settings pointing at it and at `db_url`."""
    sandbox = SalesforceSandbox(host="127.0.0.1", port=0, long_poll_seconds=1.0).start()
    prepare_for_mappings(sandbox, load_mappings(MAPPINGS))
    for name, value in {
        "DATABASE_URL": db_url,
        "SF_BRIDGE_MAPPINGS": str(MAPPINGS),
        "SF_LOGIN_URL": sandbox.url,
        "SF_USERNAME": sandbox.username,
        "SF_PASSWORD": sandbox.password,
        "SF_SECURITY_TOKEN": sandbox.security_token,
        "SF_CLIENT_ID": sandbox.client_id,
        "SF_CLIENT_SECRET": sandbox.client_secret,
        "SF_API_VERSION": API_VERSION,
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield sandbox
    get_settings.cache_clear()
    sandbox.stop()


def _deal(factory: sessionmaker[Session], opp: str) -> Deal:
    with factory() as session:
        return session.execute(select(Deal).where(Deal.opportunity_id == opp)).scalar_one()


def test_cli_replay_of_a_cancelled_deal_won_again_in_salesforce_provisions_nothing(
    org: SalesforceSandbox,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    db_url: str,
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("the CLI is the same on both; replay itself runs on both in the tests above")
    mappings = load_mappings(MAPPINGS)
    with StripeEmulator() as emu:
        emu.seed_catalog(mappings.catalog_prices())
        monkeypatch.setenv("STRIPE_API_KEY", emu.api_key)
        monkeypatch.setenv("STRIPE_API_BASE", emu.url)
        get_settings.cache_clear()
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
        account = org.create_account("Lost Co", Billing_Email__c="ap@lost.example")
        opp = org.create_opportunity(
            account,
            "Lost Co - Team",
            [{"product_code": "SB-TEAM-M", "quantity": 5, "unit_price": 15.0}],
            stage="Closed Won",
            currency="USD",
            Payment_Method__c="Invoice",
            Payment_Terms__c="Net 30",
        )
        with session_factory() as session, session.begin():
            enqueue_opportunities(session, [opp], source="test")
        drain(worker, lambda: _deal(session_factory, opp).status in ("done", "needs_attention"))
        deal = _deal(session_factory, opp)
        assert deal.status == "done", deal.last_error

        org.lose_deal(opp, stage="Closed Lost")
        with session_factory() as session, session.begin():
            mark_unwon(session, [opp], reason="Moved to Closed Lost.", source="test")
        drain(worker, lambda: _deal(session_factory, opp).status == "needs_attention")

        failed = CliRunner().invoke(app, ["replay", "--failed", "--queue-only"])
        assert failed.exit_code == 0, failed.output
        assert f"deal {deal.id} ({opp}): left alone by --failed: Deal {deal.id} was" in (
            failed.output
        )
        assert f"sf-bridge deals cancel {deal.id}" in failed.output
        assert f"sf-bridge deals keep {deal.id}" in failed.output

        with session_factory() as session, session.begin():
            assert queue_cancel(session, deal.id, reason="lost", actor="ana")
        drain(worker, lambda: _deal(session_factory, opp).status == "cancelled")
        org.close_won(opp)  # won again in Salesforce
        customers, subscriptions = emu.count("customer"), emu.count("subscription")

        named = CliRunner().invoke(app, ["replay", str(deal.id)])
        assert named.exit_code == 1, named.output
        assert f"deal {deal.id} ({opp}): not replayed: Deal {deal.id} is cancelled" in (
            named.output
        )
        assert "recorded by the intake" in named.output
        assert "Traceback" not in named.output
        assert _deal(session_factory, opp).status == "cancelled"
        assert (emu.count("customer"), emu.count("subscription")) == (customers, subscriptions)

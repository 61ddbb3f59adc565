"""`sf-bridge run` end to end on deals real orgs produce: a deal moved out of its won stage
before the worker fetched it, historical won deals below the provisioning floor, and data loads
that add an opportunity's line items after the opportunity. The sandbox org, the real Salesforce
clients, the worker and the Stripe emulator."""

from __future__ import annotations

import os
import subprocess
import sys
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


def won_long_ago(org: SalesforceSandbox, name: str, close_date: str) -> str:
    """An opportunity inserted already Closed Won with its historical Close Date, as a
    migration of old deals (Data Loader, Bulk API) creates it."""
    account = org.create_account(name, Billing_Email__c=f"ap@{name.lower().replace(' ', '-')}.io")
    return org.create_opportunity(
        account,
        f"{name} - Team",
        [{"product_code": "SB-TEAM-M", "quantity": 10, "unit_price": 15.0}],
        stage="Closed Won",
        CloseDate=close_date,
    )


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {**{k: v for k, v in os.environ.items() if not k.startswith(("SF_", "STRIPE_"))}, **env}
    return subprocess.run(
        [sys.executable, "-m", "sf_bridge", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_deals_won_before_the_floor_are_skipped_by_stream_and_sweep_and_provisioned_on_purpose(
    org: SalesforceSandbox, stripe: StripeEmulator, db_url: str, session_factory: Any
):
    env = environment(org, stripe, db_url)
    # Edited today, won in 2019: the start sweep finds it (modified within its overlap).
    historic = won_long_ago(org, "Historic", "2019-06-28")
    worker = start_worker(env)  # the first start on this database: the default floor
    try:
        wait_until(lambda: statuses(session_factory).get(historic) == "skipped", 10, "swept")
        migrated = won_long_ago(org, "Migrated", "2020-01-31")  # its CREATE event, on the stream
        current = team_deal(org, "Current")
        org.close_won(current)
        wait_until(lambda: statuses(session_factory).get(current) == "done", 20, "current deal")
        wait_until(lambda: statuses(session_factory).get(migrated) == "skipped", 10, "migrated")
    finally:
        assert worker.stop()
    assert deal_row(session_factory, historic).source == "sweep"
    assert deal_row(session_factory, migrated).source == "stream"
    for opp in (historic, migrated):
        deal = deal_row(session_factory, opp)
        assert deal.last_error_code == "before_floor"
        assert "Won before the provisioning floor" in (deal.last_error or "")
    assert stripe_objects(stripe) == {"customer": 1, "subscription": 1, "invoice": 1}

    listed = cli(env, "deals", "--status", "skipped")
    assert listed.returncode == 0, listed.stderr
    assert historic in listed.stdout
    assert migrated in listed.stdout
    shown = cli(env, "deals", "show", historic)
    assert "Won before the provisioning floor: its Close Date 2019-06-28" in " ".join(
        shown.stdout.split()
    )

    failed = cli(env, "replay", "--failed")
    assert failed.returncode == 0, failed.stderr
    named = cli(env, "replay", migrated)
    assert "--include-skipped" in named.stdout
    assert statuses(session_factory)[migrated] == "skipped"

    on_purpose = cli(env, "replay", "--include-skipped", migrated)
    assert on_purpose.returncode == 0, on_purpose.stdout + on_purpose.stderr
    assert statuses(session_factory) == {historic: "skipped", migrated: "done", current: "done"}
    assert stripe_objects(stripe) == {"customer": 2, "subscription": 2, "invoice": 2}
    assert org.get_opportunity(migrated)["SF_Bridge_Status__c"] == "Provisioned"


def loaded_without_lines(org: SalesforceSandbox, name: str) -> str:
    """Step one of a data load: the opportunity, inserted already Closed Won, no lines yet."""
    account = org.create_account(name, Billing_Email__c=f"ap@{name.lower().replace(' ', '-')}.io")
    return org.create_opportunity(
        account, f"{name} - Team", [], stage="Closed Won", change_origin=org.data_load_origin()
    )


TEAM_LINES = [{"product_code": "SB-TEAM-M", "quantity": 10, "unit_price": 15.0}]


def test_a_deal_loaded_before_its_lines_waits_for_them_and_is_fetched_again_when_they_arrive(
    org: SalesforceSandbox, stripe: StripeEmulator, db_url: str, session_factory: Any
):
    # A long wait polls every 30 s: done within seconds proves the lines' event woke the deal.
    env = {**environment(org, stripe, db_url), "SF_BRIDGE_LINE_ITEMS_WAIT": "300"}
    worker = start_worker(env)
    try:
        opp = loaded_without_lines(org, "Bulk Loaded")
        wait_until(
            lambda: statuses(session_factory).get(opp) in ("retrying", "needs_attention"),
            10,
            "fetched before its lines existed",
        )
        deal = deal_row(session_factory, opp)
        assert deal.status == "retrying"
        assert deal.last_error_code == "awaiting_line_items"
        assert stripe_objects(stripe) == {"customer": 0, "subscription": 0, "invoice": 0}
        org.add_line_items(opp, TEAM_LINES, change_origin=org.data_load_origin())
        wait_until(lambda: statuses(session_factory).get(opp) == "done", 10, "provisioned")
    finally:
        assert worker.stop()
    assert stripe_objects(stripe) == {"customer": 1, "subscription": 1, "invoice": 1}
    assert org.get_opportunity(opp)["SF_Bridge_Status__c"] == "Provisioned"


def test_a_deal_whose_lines_never_came_is_parked_with_what_to_do_then_fetched_when_they_do(
    org: SalesforceSandbox, stripe: StripeEmulator, db_url: str, session_factory: Any
):
    env = {**environment(org, stripe, db_url), "SF_BRIDGE_LINE_ITEMS_WAIT": "1"}
    worker = start_worker(env)
    try:
        opp = loaded_without_lines(org, "Forgotten Lines")
        wait_until(lambda: statuses(session_factory).get(opp) == "needs_attention", 10, "parked")
        deal = deal_row(session_factory, opp)
        assert deal.last_error_code == "no_line_items"
        assert "no line items 1 second after it was won" in (deal.last_error or "")
        assert "add its products in Salesforce" in (deal.last_error or "")
        wait_until(
            lambda: org.get_opportunity(opp).get("SF_Bridge_Status__c") == "Needs attention",
            10,
            "the reason written onto the opportunity",
        )
        org.add_line_items(opp, TEAM_LINES, change_origin=org.data_load_origin())
        wait_until(lambda: statuses(session_factory).get(opp) == "done", 10, "provisioned")
    finally:
        assert worker.stop()
    assert stripe_objects(stripe) == {"customer": 1, "subscription": 1, "invoice": 1}


def test_a_provisioned_deal_whose_lines_change_in_its_won_stage_is_parked_for_an_amendment(
    org: SalesforceSandbox, stripe: StripeEmulator, db_url: str, session_factory: Any
):
    worker = start_worker(environment(org, stripe, db_url))
    try:
        opp = team_deal(org, "Edited After Close")
        org.close_won(opp)
        wait_until(lambda: statuses(session_factory).get(opp) == "done", 10, "provisioned")
        # A rep adds a line to the won deal, in the UI: no stage change.
        org.add_line_items(opp, [{"product_code": "SB-TEAM-M", "quantity": 5, "unit_price": 15.0}])
        wait_until(
            lambda: statuses(session_factory).get(opp) == "needs_attention", 10, "the change"
        )
        deal = deal_row(session_factory, opp)
        assert deal.last_error_code == "changed_after_provisioning"
        assert "line items changed (1 line(s) then, 2 now)" in (deal.last_error or "")
        assert "amendment" in (deal.last_error or "")
        wait_until(
            lambda: org.get_opportunity(opp).get("SF_Bridge_Status__c") == "Needs attention",
            10,
            "the reason written onto the opportunity",
        )
    finally:
        assert worker.stop()
    # Nothing billed twice, nothing changed in Stripe by itself.
    assert stripe_objects(stripe) == {"customer": 1, "subscription": 1, "invoice": 1}

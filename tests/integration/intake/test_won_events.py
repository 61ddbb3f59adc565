"""One definition of won, through the sandbox org and the real streaming client: a won stage the
mapping does not list and change events without `changedFields` reach the queue by the stream
itself (the sweep runs once an hour here, so it cannot be what finds them)."""

from __future__ import annotations

from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from tests.integration.intake.conftest import (
    deal_count,
    deals_by_source,
    fast_options,
    open_deal,
    wait_until,
)

EXPANSION = "Closed Won - Expansion"


def test_a_won_stage_the_mapping_does_not_list_is_re_read_and_enqueued(
    intake_org: SalesforceSandbox, session_factory, harness
):
    intake_org.add_stage(EXPANSION, probability=100, closed=True, won=True, forecast="Closed")
    # A PushTopic that selects the stage but not IsWon: the event carries "Closed Won -
    # Expansion", which the mapping's won_stages (Closed Won) do not list.
    channel = intake_org.define_push_topic("StageChanges", "SELECT Id, StageName FROM Opportunity")
    h = harness(channel=channel)
    intake = h.start()
    expansion, open_one = open_deal(intake_org, "Expansion"), open_deal(intake_org, "Still open")
    intake_org.close_won(expansion, StageName=EXPANSION)
    intake_org.update_opportunity(open_one, StageName="Qualification")
    wait_until(lambda: expansion in deals_by_source(session_factory), 5, "the expansion deal")
    wait_until(lambda: intake.stats.rechecked >= 2, 5, "both stages re-read")
    assert deals_by_source(session_factory) == {expansion: "stream"}


def test_change_events_without_changed_fields_are_judged_by_the_fields_they_carry(
    session_factory, harness
):
    org = SalesforceSandbox(port=0, long_poll_seconds=1.0, changed_fields_in_header=False)
    org.start()
    try:
        org.create_product("PRO-M", "Pro", unit_price=100)
        h = harness(org=org)
        intake = h.start()
        edited, won = open_deal(org, "Edited"), open_deal(org, "Won")
        org.update_opportunity(edited, Description="a note, not a stage change")
        org.close_won(won)
        header = org.events.retained()[-1].message["data"]["payload"]["ChangeEventHeader"]
        assert "changedFields" not in header
        wait_until(lambda: deal_count(session_factory) == 1, 5, "the won deal")
        assert deals_by_source(session_factory) == {won: "stream"}
        assert intake.stats.malformed == 0
        h.stop()
    finally:
        org.stop()


def test_lines_added_to_a_deal_inserted_won_while_nobody_listened_are_re_read_and_enqueued(
    intake_org: SalesforceSandbox, session_factory, harness
):
    loader = intake_org.data_load_origin()
    account = intake_org.create_account("Loaded")
    # Inserted already Closed Won before the stream subscribed (new events only) and outside
    # the start sweep's window: only its later line items can tell.
    loaded = intake_org.create_opportunity(
        account, "Loaded deal", [], stage="Closed Won", change_origin=loader
    )
    h = harness(options=fast_options(sweep_overlap_seconds=0.0))
    intake = h.start()
    assert deal_count(session_factory) == 0
    intake_org.add_line_items(
        loaded, [{"product_code": "PRO-M", "quantity": 3}], change_origin=loader
    )
    header = intake_org.events.retained()[-1].message["data"]["payload"]["ChangeEventHeader"]
    assert header["changedFields"] == ["Amount", "HasOpportunityLineItem", "LastModifiedDate"]
    assert header["changeOrigin"].startswith("com/salesforce/api/soap/")
    wait_until(lambda: deal_count(session_factory) == 1, 5, "the loaded deal")
    assert deals_by_source(session_factory) == {loaded: "stream"}
    assert intake.stats.rechecked == 1


def test_a_ui_edit_of_the_lines_of_an_unknown_open_deal_costs_no_query(
    intake_org: SalesforceSandbox, session_factory, harness
):
    h = harness(options=fast_options(sweep_overlap_seconds=0.0))
    intake = h.start()
    account = intake_org.create_account("Open")
    opened = intake_org.create_opportunity(account, "Open deal", [], stage="Prospecting")
    wait_until(lambda: intake.stats.events >= 1, 5, "the CREATE event")
    intake_org.add_line_items(opened, [{"product_code": "PRO-M", "quantity": 3}])  # the UI
    header = intake_org.events.retained()[-1].message["data"]["payload"]["ChangeEventHeader"]
    assert header["changedFields"] == ["Amount", "HasOpportunityLineItem", "LastModifiedDate"]
    assert not header["changeOrigin"]
    wait_until(lambda: intake.stats.events >= 2, 5, "the lines' event")
    assert intake.stats.rechecked == 0
    assert deal_count(session_factory) == 0

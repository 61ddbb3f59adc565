"""A deal deleted or restored, heard on a PushTopic instead of Change Data Capture: Salesforce
notifies a PushTopic of deletes and undeletes (`NotifyForOperationDelete` /
`NotifyForOperationUndelete`, both true by default) with the `deleted` / `undeleted` event
types; the intake records the deleted deal un-won as it does on a CDC `DELETE`."""

from __future__ import annotations

from sqlalchemy import select

from sf_bridge.db.models import Deal, DealEvent
from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from tests.integration.intake.conftest import deals_by_source, open_deal, wait_until
from tests.integration.intake.test_unwon_events import _provisioned, _status

WON_DEALS = "SELECT Id, StageName, IsWon FROM Opportunity WHERE IsWon = true"


def test_a_provisioned_deal_deleted_on_a_push_topic_ends_unwon_and_restored_is_parked(
    intake_org: SalesforceSandbox, session_factory, harness
):
    channel = intake_org.define_push_topic("WonDeals", WON_DEALS)
    h = harness(channel=channel)
    intake = h.start()
    deleted, open_one = open_deal(intake_org, "Deleted"), open_deal(intake_org, "Never won")
    intake_org.close_won(deleted)
    wait_until(lambda: deleted in deals_by_source(session_factory), 5, "the won deal")
    _provisioned(session_factory, deleted)

    intake_org.delete_opportunity(open_one)  # outside the topic's query: no notification
    intake_org.delete_opportunity(deleted)
    last = intake_org.events.retained(channel)[-1].message["data"]
    assert last["event"]["type"] == "deleted"
    assert last["sobject"] == {"Id": deleted}
    assert len(intake_org.events.retained(channel)) == 2  # won (updated), then deleted
    wait_until(lambda: _status(session_factory, deleted) == "unwon", 5, "the deal un-won")
    with session_factory() as session:
        reason = session.scalar(
            select(DealEvent.message)
            .join(Deal, DealEvent.deal_id == Deal.id)
            .where(Deal.opportunity_id == deleted, DealEvent.kind == "unwon")
        )
    assert reason is not None
    assert "deleted" in reason
    assert intake.stats.unwon == 1

    # Restored from the Recycle Bin, still won: a known deal won again, parked for RevOps.
    intake_org.undelete_opportunity(deleted)
    last = intake_org.events.retained(channel)[-1].message["data"]
    assert last["event"]["type"] == "undeleted"
    assert last["sobject"]["IsWon"] is True
    wait_until(
        lambda: _status(session_factory, deleted) == "needs_attention", 5, "the restored deal"
    )
    h.stop()


def test_a_push_topic_told_not_to_notify_deletes_hears_nothing(intake_org: SalesforceSandbox):
    channel = intake_org.define_push_topic(
        "NoDeletes",
        WON_DEALS,
        notify_for_operation_delete=False,
        notify_for_operation_undelete=False,
    )
    opp = open_deal(intake_org, "Deal")
    intake_org.close_won(opp)
    intake_org.delete_opportunity(opp)
    intake_org.undelete_opportunity(opp)
    assert [e.message["data"]["event"]["type"] for e in intake_org.events.retained(channel)] == [
        "updated"
    ]

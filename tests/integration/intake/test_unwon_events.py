"""After the first close, through the sandbox org and the real streaming client: a known deal
whose opportunity is lost, moved back to an open stage or deleted is recorded as un-won, in
the transaction that commits the replay id; an unknown one is left alone."""

from __future__ import annotations

from sqlalchemy import select, update

from sf_bridge.db.models import Deal, DealEvent
from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from tests.integration.intake.conftest import deals_by_source, open_deal, wait_until


def _status(session_factory, opportunity_id: str) -> str | None:
    with session_factory() as session:
        return session.scalar(select(Deal.status).where(Deal.opportunity_id == opportunity_id))


def _provisioned(session_factory, *opportunity_ids: str) -> None:
    with session_factory() as session, session.begin():
        session.execute(
            update(Deal)
            .where(Deal.opportunity_id.in_(opportunity_ids))
            .values(status="done", current_step=None)
        )


def test_lost_reopened_and_deleted_deals_are_recorded_unwon(
    intake_org: SalesforceSandbox, session_factory, harness
):
    h = harness()
    intake = h.start()
    lost, reopened, deleted = (open_deal(intake_org, n) for n in ("Lost", "Reopened", "Deleted"))
    never_known = open_deal(intake_org, "Never won")
    for opp in (lost, reopened, deleted):
        intake_org.close_won(opp)
    wait_until(lambda: len(deals_by_source(session_factory)) == 3, 5, "the won deals")
    _provisioned(session_factory, lost, reopened, deleted)

    intake_org.lose_deal(lost)
    intake_org.lose_deal(reopened, stage="Negotiation/Review")
    intake_org.delete_opportunity(deleted)
    intake_org.delete_opportunity(never_known)
    header = intake_org.events.retained()[-1].message["data"]["payload"]["ChangeEventHeader"]
    assert header["changeType"] == "DELETE"
    assert header["recordIds"] == [never_known]
    wait_until(
        lambda: all(_status(session_factory, o) == "unwon" for o in (lost, reopened, deleted)),
        5,
        "the three deals recorded un-won",
    )
    assert _status(session_factory, never_known) is None
    with session_factory() as session:
        reasons = dict(
            session.execute(
                select(Deal.opportunity_id, DealEvent.message)
                .join(DealEvent, DealEvent.deal_id == Deal.id)
                .where(DealEvent.kind == "unwon")
            ).all()
        )
    assert "deleted" in reasons[deleted]
    assert "left its won stage" in reasons[lost]
    assert intake.stats.unwon == 3

    # Restored from the Recycle Bin, won: a known deal won again, parked for RevOps (keep
    # it as it was, or cancel it) like one reopened and closed again.
    intake_org.undelete_opportunity(deleted)
    header = intake_org.events.retained()[-1].message["data"]["payload"]["ChangeEventHeader"]
    assert header["changeType"] == "UNDELETE"
    wait_until(
        lambda: _status(session_factory, deleted) == "needs_attention", 5, "the restored deal"
    )
    # Won again after it was lost: recorded as changed after provisioning, never ignored.
    intake_org.close_won(lost)
    wait_until(lambda: _status(session_factory, lost) == "needs_attention", 5, "the deal won again")
    with session_factory() as session:
        code = session.scalar(select(Deal.last_error_code).where(Deal.opportunity_id == lost))
    assert code == "changed_after_provisioning"
    assert _status(session_factory, reopened) == "unwon"  # still open: left alone
    h.stop()


def test_sweep_finds_deals_lost_or_deleted_while_nobody_listened(
    intake_org: SalesforceSandbox, session_factory
):
    """An outage longer than the replay window: the change events are gone, and a won-since
    query cannot see a deal that left its won stage. The sweep re-reads the known deals'
    won state through QueryAll (which returns soft-deleted records), a share per sweep."""
    from datetime import timedelta

    from sf_bridge.crm.salesforce import SalesforceCrm
    from sf_bridge.intake.sweep import Sweeper
    from sf_bridge.provisioning.queue import enqueue_opportunities
    from tests.integration.intake.conftest import API_VERSION, credentials_for

    names = ("Lost", "Reopened", "Deleted", "Purged", "Still won")
    lost, reopened, deleted, purged, still_won = (open_deal(intake_org, n) for n in names)
    for opp in (lost, reopened, deleted, purged, still_won):
        intake_org.close_won(opp)
    with session_factory() as session, session.begin():
        enqueue_opportunities(
            session, [lost, reopened, deleted, purged, still_won], source="stream"
        )
    _provisioned(session_factory, lost, reopened, deleted, purged, still_won)
    # Nobody listens while these happen.
    intake_org.lose_deal(lost)
    intake_org.lose_deal(reopened, stage="Negotiation/Review")
    intake_org.delete_opportunity(deleted)
    intake_org.delete_opportunity(purged)
    intake_org.purge_deleted(purged)

    crm = SalesforceCrm(credentials_for(intake_org), api_version=API_VERSION)
    assert crm.unwon_among([lost, reopened, deleted, purged, still_won]) == {
        lost: "lost",
        reopened: "lost",
        deleted: "deleted",
        purged: "deleted",
    }
    sweeper = Sweeper(
        crm,
        session_factory,
        lambda session, ids: enqueue_opportunities(session, ids, source="sweep"),
        initial_lookback=timedelta(days=1),
        unwon_among=crm.unwon_among,
        unwon_batch=3,  # a share of the known deals per sweep
    )
    queries = intake_org.calls["query"]
    sweeper.run_once()
    # one won-since query and one QueryAll for the first three deals
    assert intake_org.calls["query"] - queries == 2
    assert [_status(session_factory, o) for o in (lost, reopened, deleted)] == ["unwon"] * 3
    assert _status(session_factory, purged) == "done"  # its turn is the next sweep
    sweeper.run_once()
    assert _status(session_factory, purged) == "unwon"
    assert _status(session_factory, still_won) == "done"
    assert sweeper.unwon_found == 4
    with session_factory() as session:
        reasons = dict(
            session.execute(
                select(Deal.opportunity_id, DealEvent.message)
                .join(DealEvent, DealEvent.deal_id == Deal.id)
                .where(DealEvent.kind == "unwon")
            ).all()
        )
    assert "deleted" in reasons[purged]
    assert "sweep" in reasons[purged]
    assert "left its won stage" in reasons[lost]
    # Round again from the start: nothing new is marked (the un-won ones are not re-read).
    queries = intake_org.calls["query"]
    sweeper.run_once()
    assert sweeper.unwon_found == 4
    assert intake_org.calls["query"] - queries == 2  # won-since + the one still won


def test_cancelled_deal_won_again_stays_cancelled_and_says_so(
    intake_org: SalesforceSandbox, session_factory, harness
):
    h = harness()
    h.start()
    opp = open_deal(intake_org, "Cancelled then won")
    intake_org.close_won(opp)
    wait_until(lambda: _status(session_factory, opp) is not None, 5, "the won deal")
    _provisioned(session_factory, opp)
    intake_org.lose_deal(opp)
    wait_until(lambda: _status(session_factory, opp) == "unwon", 5, "the deal un-won")
    with session_factory() as session, session.begin():  # as the cancellation leaves it
        session.execute(
            update(Deal)
            .where(Deal.opportunity_id == opp)
            .values(
                status="cancelled",
                current_step=None,
                last_error="Cancelled: lost to a competitor",
                last_error_code="cancelled",
                writeback_pending=False,
            )
        )

    def _noted() -> list[str]:
        with session_factory() as session:
            return list(
                session.scalars(
                    select(DealEvent.message)
                    .join(Deal, Deal.id == DealEvent.deal_id)
                    .where(Deal.opportunity_id == opp, DealEvent.kind == "won_after_cancel")
                )
            )

    intake_org.close_won(opp)
    wait_until(lambda: len(_noted()) == 1, 5, "the note on the cancelled deal")
    with session_factory() as session:
        deal = session.scalars(select(Deal).where(Deal.opportunity_id == opp)).one()
    assert deal.status == "cancelled"  # never resurrected silently
    assert deal.last_error_code == "won_after_cancel"
    assert "stays cancelled" in (deal.last_error or "")
    assert "lost to a competitor" in (deal.last_error or "")  # the cancel reason is kept
    assert deal.writeback_pending  # Salesforce is told again
    # Lost and won once more: recorded once, not on every flap.
    intake_org.lose_deal(opp)
    intake_org.close_won(opp)
    marker = open_deal(intake_org, "Marker")
    intake_org.close_won(marker)
    wait_until(lambda: _status(session_factory, marker) is not None, 5, "the marker deal")
    assert len(_noted()) == 1
    assert _status(session_factory, opp) == "cancelled"
    h.stop()


def test_sweep_parks_provisioned_deals_whose_lines_changed_and_only_those(
    intake_org: SalesforceSandbox, session_factory
):
    """The sweep's won opportunities modified since their snapshot are read again and
    compared: only a real difference in lines or amount parks the deal; any other edit (a
    write-back, a description) moves LastModifiedDate but is not a change to bill."""
    from datetime import timedelta

    from sf_bridge.crm.salesforce import SalesforceCrm
    from sf_bridge.intake.sweep import Sweeper
    from sf_bridge.provisioning.changes import find_changed_lines
    from sf_bridge.provisioning.queue import enqueue_opportunities
    from tests.integration.intake.conftest import API_VERSION, credentials_for

    crm = SalesforceCrm(credentials_for(intake_org), api_version=API_VERSION)
    edited, described, loading = (
        open_deal(intake_org, n) for n in ("Edited", "Described", "Loading")
    )
    for opp in (edited, described, loading):
        intake_org.close_won(opp)
    with session_factory() as session, session.begin():
        enqueue_opportunities(session, [edited, described, loading], source="stream")
    _provisioned(session_factory, edited, described)
    for record in crm.fetch_opportunities([edited, described, loading]):  # the fetch's snapshot
        with session_factory() as session, session.begin():
            session.execute(
                update(Deal).where(Deal.opportunity_id == record["Id"]).values(opportunity=record)
            )
    with session_factory() as session, session.begin():  # not provisioned yet: refetched
        session.execute(update(Deal).where(Deal.opportunity_id == loading).values(status="mapped"))
    intake_org.add_line_items(edited, [{"product_code": "PRO-M", "quantity": 2, "unit_price": 100}])
    intake_org.update_opportunity(described, Description="Renewal notes")
    intake_org.add_line_items(
        loading, [{"product_code": "PRO-M", "quantity": 2, "unit_price": 100}]
    )
    # Read again, nothing billed differs for the described one.
    assert set(
        find_changed_lines(session_factory, crm.fetch_opportunities, [edited, described])
    ) == {edited}
    sweeper = Sweeper(
        crm,
        session_factory,
        lambda session, ids: enqueue_opportunities(session, ids, source="sweep"),
        initial_lookback=timedelta(days=1),
        find_changed=lambda modified: find_changed_lines(
            session_factory, crm.fetch_opportunities, list(modified), modified=modified
        ),
        refresh=lambda session, modified: __import__(
            "sf_bridge.provisioning.queue", fromlist=["refresh_modified"]
        ).refresh_modified(session, modified, source="sweep"),
    )
    sweeper.run_once()
    assert _status(session_factory, edited) == "needs_attention"
    assert _status(session_factory, described) == "done"
    assert _status(session_factory, loading) == "mapped"  # not provisioned: not parked
    assert sweeper.changed_found == 1
    with session_factory() as session:
        code, error = session.execute(
            select(Deal.last_error_code, Deal.last_error).where(Deal.opportunity_id == edited)
        ).one()
    assert code == "changed_after_provisioning"
    assert "its line items changed (1 line(s) then, 2 now)" in error

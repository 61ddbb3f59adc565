"""Replay judges a re-read deal as the fetch does (no longer won, closed before the floor), and
a floor waived on purpose stays waived for every later fetch of that deal."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from sf_bridge.db.models import Deal
from sf_bridge.provisioning.queue import enqueue_opportunities, refresh_unprovisioned
from sf_bridge.provisioning.replay import replay
from tests.fixtures.provisioning import Harness, drain, make_plan

FLOOR = datetime(2026, 12, 1, tzinfo=UTC)
LOST, OLD, WAIVED = "006000000000011AAA", "006000000000012AAA", "006000000000013AAA"


def park_at_map(h: Harness, opp: str) -> None:
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [opp], source="stream")
        deal = session.execute(select(Deal).where(Deal.opportunity_id == opp)).scalar_one()
        deal.status, deal.current_step = "needs_attention", "map"
        deal.opportunity = dict(h.crm.opportunities[opp])
        deal.last_error, deal.last_error_code = "no plan", "no_plan"


def test_replay_failed_skips_a_deal_now_lost_or_closed_before_the_floor(harness: Harness) -> None:
    h = harness
    for opp in (LOST, OLD):
        h.add_opportunity(make_plan(opp))
        h.crm.opportunities[opp]["CloseDate"] = "2026-12-02"
        park_at_map(h, opp)
    h.crm.opportunities[LOST].update(IsWon=False, StageName="Closed Lost")
    h.crm.opportunities[OLD]["CloseDate"] = "2019-06-28"
    outcomes = replay(h.session_factory, failed=True, crm=h.crm, floor=FLOOR)
    assert [o.requeued for o in outcomes] == [False, False]
    assert (h.deal(LOST).status, h.deal(LOST).last_error_code) == ("skipped", "not_won")
    assert (h.deal(OLD).status, h.deal(OLD).last_error_code) == ("skipped", "before_floor")
    assert h.deal(OLD).opportunity["CloseDate"] == "2019-06-28"  # type: ignore[index]
    assert h.billing.total_calls == 0  # type: ignore[union-attr]


def test_a_floor_waived_on_purpose_holds_when_its_lines_send_it_back_to_fetch(
    harness: Harness,
) -> None:
    h = harness
    h.settings = h.settings.model_copy(update={"provision_floor": FLOOR.date().isoformat()})
    h.add_opportunity(make_plan(WAIVED))
    h.crm.opportunities[WAIVED]["CloseDate"] = "2019-06-28"
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [WAIVED], source="stream")
    drain(h.worker(), lambda: h.statuses().get(WAIVED) == "skipped")
    assert h.deal(WAIVED).last_error_code == "before_floor"
    [outcome] = replay(h.session_factory, [WAIVED], include_skipped=True, crm=h.crm, floor=FLOOR)
    assert outcome.requeued
    with h.session_factory() as session, session.begin():  # its lines changed meanwhile
        assert refresh_unprovisioned(session, [WAIVED], source="stream") == [WAIVED]
    drain(h.worker(), lambda: h.statuses().get(WAIVED) in ("done", "skipped", "needs_attention"))
    assert h.statuses()[WAIVED] == "done"
    # A later replay re-reads it and still honours the waiver.
    h.crm.opportunities[WAIVED]["Description"] = "edited"
    assert replay(h.session_factory, [WAIVED], crm=h.crm, floor=FLOOR)[0].message.startswith(
        "already done"
    )


def test_the_wait_for_line_items_runs_from_when_the_deal_was_queued_again(
    harness: Harness,
) -> None:
    from datetime import timedelta

    from sf_bridge.db.models import DealEvent, utcnow
    from sf_bridge.provisioning.queue import requeue_won_again

    h = harness
    h.settings = h.settings.model_copy(update={"line_items_wait_seconds": 300.0})
    late = "006000000000014AAA"
    h.add_opportunity(make_plan(late))
    h.crm.opportunities[late]["OpportunityLineItems"] = None  # no lines yet
    hour_ago = utcnow() - timedelta(hours=1)
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [late], source="stream")
        deal = session.execute(select(Deal).where(Deal.opportunity_id == late)).scalar_one()
        # Enqueued an hour ago, skipped as no longer won, and won again just now.
        deal.created_at = hour_ago
        for event in session.execute(select(DealEvent).where(DealEvent.deal_id == deal.id)):
            event[0].at = hour_ago
        deal.status, deal.current_step, deal.last_error_code = "skipped", None, "not_won"
    with h.session_factory() as session, session.begin():
        assert requeue_won_again(session, [late], source="stream") == [late]
    drain(h.worker(), lambda: h.statuses().get(late) in ("retrying", "needs_attention"))
    deal = h.deal(late)
    assert (deal.status, deal.last_error_code) == ("retrying", "awaiting_line_items")
    assert deal.opportunity is not None  # the snapshot a sweep compares against

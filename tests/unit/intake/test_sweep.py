"""The sweep against an in-memory CRM and a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sf_bridge.crm.port import InMemoryCrm
from sf_bridge.db.engine import make_engine, make_session_factory
from sf_bridge.intake.sweep import Sweeper
from sf_bridge.provisioning.queue import enqueue_opportunities

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def opp_id(i: int) -> str:
    return f"0068d{i:010d}AAA"


def won(crm: InMemoryCrm, i: int, at: datetime) -> str:
    crm.opportunities[opp_id(i)] = {
        "Id": opp_id(i),
        "IsWon": True,
        "LastModifiedDate": at.isoformat(),
    }
    return opp_id(i)


def make_sweeper(sqlite_url: str, crm: InMemoryCrm, now: list[datetime], **kw) -> Sweeper:
    factory = make_session_factory(make_engine(sqlite_url))
    return Sweeper(
        crm,
        factory,
        lambda session, ids: enqueue_opportunities(session, ids, source="sweep"),
        clock=lambda: now[0],
        **kw,
    )


def test_first_sweep_starts_at_the_lookback_then_follows_the_checkpoint(sqlite_url: str):
    crm = InMemoryCrm()
    now = [T0]
    won(crm, 1, T0 - timedelta(days=3))  # won long before sf-bridge was installed
    recent = won(crm, 2, T0 - timedelta(minutes=30))
    sweeper = make_sweeper(
        sqlite_url, crm, now, overlap=timedelta(0), initial_lookback=timedelta(hours=1)
    )
    assert sweeper.run_once("start") == [recent]
    assert sweeper.checkpoint() == T0 - timedelta(minutes=30)  # the newest won deal seen
    later = won(crm, 3, T0 + timedelta(minutes=5))
    assert sweeper.run_once() == [later]
    assert sweeper.checkpoint() == T0 + timedelta(minutes=5)
    assert sweeper.run_once() == []  # enqueueing is idempotent and the checkpoint moved on


def test_overlap_re_reads_recent_changes_without_enqueueing_twice(sqlite_url: str):
    crm = InMemoryCrm()
    now = [T0]
    sweeper = make_sweeper(sqlite_url, crm, now, overlap=timedelta(minutes=5))
    first = won(crm, 1, T0 + timedelta(minutes=10))
    assert sweeper.run_once() == [first]
    # Committed late with an earlier LastModifiedDate than the checkpoint: the overlap finds it.
    late = won(crm, 2, T0 + timedelta(minutes=8))
    assert sweeper.run_once() == [late]


def test_full_pages_are_followed(sqlite_url: str):
    crm = InMemoryCrm()
    now = [T0]
    # 25 deals, three sharing each second: pages of 4 cut through shared timestamps.
    ids = [won(crm, i, T0 + timedelta(seconds=1 + i // 3)) for i in range(1, 26)]
    sweeper = make_sweeper(sqlite_url, crm, now, overlap=timedelta(0), page_size=4)
    assert sorted(sweeper.run_once()) == sorted(ids)
    assert sweeper.checkpoint() == T0 + timedelta(seconds=1 + 25 // 3)


def test_a_known_deal_waiting_for_lines_is_fetched_again_when_its_record_changed(
    sqlite_url: str,
):
    from sqlalchemy import select

    from sf_bridge.db.models import Deal
    from sf_bridge.provisioning.queue import refresh_modified

    crm = InMemoryCrm()
    now = [T0]
    sweeper = make_sweeper(
        sqlite_url,
        crm,
        now,
        overlap=timedelta(minutes=5),
        refresh=lambda session, modified: refresh_modified(session, modified, source="sweep"),
    )
    loaded = won(crm, 1, T0 + timedelta(minutes=1))
    assert sweeper.run_once() == [loaded]
    with sweeper.session_factory() as session, session.begin():
        deal = session.execute(select(Deal)).scalar_one()
        deal.status, deal.current_step = "needs_attention", "fetch"
        deal.last_error_code = "no_line_items"
        deal.opportunity = dict(crm.opportunities[loaded])
    assert sweeper.run_once() == []  # nothing changed since
    assert sweeper.refreshed == 0
    won(crm, 1, T0 + timedelta(minutes=2))  # its lines came (no change event said so)
    assert sweeper.run_once() == []
    assert sweeper.refreshed == 1
    with sweeper.session_factory() as session:
        deal = session.execute(select(Deal)).scalar_one()
        assert (deal.status, deal.current_step) == ("received", "fetch")

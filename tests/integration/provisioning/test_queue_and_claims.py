"""Enqueueing and claiming on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.models import Deal, DealEvent
from sf_bridge.provisioning import claim
from sf_bridge.provisioning.queue import (
    InvalidOpportunity,
    enqueue_opportunities,
    enqueue_snapshot,
)

LEASE = timedelta(seconds=30)
ACCOUNT = "001000000000001AAA"
ACCOUNT_B = "001000000000002AAA"


def _ids(n: int) -> list[str]:
    return [f"0060000000{i:05d}AAA" for i in range(n)]


def test_enqueue_dedupes_on_the_opportunity_id(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session, session.begin():
        assert enqueue_opportunities(session, _ids(3), source="stream") == _ids(3)
    with session_factory() as session, session.begin():
        again = enqueue_opportunities(session, [*_ids(5), _ids(4)[3]], source="sweep")
        assert again == _ids(5)[3:]
    with session_factory() as session:
        assert session.execute(select(func.count()).select_from(Deal)).scalar() == 5
        assert session.execute(select(func.count()).select_from(DealEvent)).scalar() == 5
        deal = session.execute(select(Deal).where(Deal.opportunity_id == _ids(1)[0])).scalar_one()
        assert (deal.status, deal.current_step, deal.source) == ("received", "fetch", "stream")


def test_concurrent_enqueues_make_one_deal_each(session_factory: sessionmaker[Session]) -> None:
    barrier = threading.Barrier(4)
    won: list[list[str]] = []
    errors: list[BaseException] = []

    def enqueue() -> None:
        try:
            barrier.wait(timeout=10)
            with session_factory() as session, session.begin():
                won.append(enqueue_opportunities(session, _ids(20), source="stream"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=enqueue) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert sorted(i for batch in won for i in batch) == sorted(_ids(20))
    with session_factory() as session:
        assert session.execute(select(func.count()).select_from(Deal)).scalar() == 20


def test_snapshot_enqueue_starts_at_map_and_is_idempotent(
    session_factory: sessionmaker[Session],
) -> None:
    opp = {"Id": "006000000000001AAA", "AccountId": "001000000000001AAA", "Name": "X"}
    with session_factory() as session, session.begin():
        first = enqueue_snapshot(session, opp, source="file")
        assert (first.status, first.current_step) == ("fetched", "map")
        assert first.opportunity == opp
    with session_factory() as session, session.begin():
        assert enqueue_snapshot(session, opp, source="file").id == first.id


def test_invalid_opportunity_ids_are_refused(session_factory: sessionmaker[Session]) -> None:
    with (
        session_factory() as session,
        pytest.raises(InvalidOpportunity, match="not a Salesforce Opportunity Id"),
    ):
        enqueue_opportunities(session, ["not-an-opportunity-id-at-all"], source="stream")


def test_claims_are_exclusive_until_the_lease_expires(
    session_factory: sessionmaker[Session],
) -> None:
    now = datetime.now(UTC)
    with session_factory() as session, session.begin():
        enqueue_opportunities(session, _ids(10), source="stream")
    with session_factory() as session:
        a = claim.claim_deals(session, steps=("fetch",), owner="a", now=now, lease=LEASE, limit=6)
    with session_factory() as session:
        b = claim.claim_deals(session, steps=("fetch",), owner="b", now=now, lease=LEASE, limit=6)
    assert len(a) == 6
    assert len(b) == 4
    assert not set(a) & set(b)
    with session_factory() as session:
        assert (
            claim.claim_deals(session, steps=("fetch",), owner="c", now=now, lease=LEASE, limit=10)
            == []
        )
        later = now + LEASE + timedelta(seconds=1)
        assert (
            len(
                claim.claim_deals(
                    session, steps=("fetch",), owner="c", now=later, lease=LEASE, limit=10
                )
            )
            == 10
        )
    with session_factory() as session:
        assert claim.load_owned(session, a[0], "a") is None
        assert claim.load_owned(session, a[0], "c") is not None


def test_concurrent_claimers_never_share_a_deal(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session, session.begin():
        enqueue_opportunities(session, _ids(40), source="stream")
    now = datetime.now(UTC)
    barrier = threading.Barrier(4)
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        barrier.wait(timeout=10)
        while True:
            with session_factory() as session:
                got = claim.claim_deals(
                    session, steps=("fetch",), owner=name, now=now, lease=LEASE, limit=3
                )
            if not got:
                return
            with lock:
                claimed.extend(got)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(claimed) == sorted(set(claimed))
    assert len(claimed) == 40


def test_renewed_leases_hold_until_their_owner_stops_renewing(
    session_factory: sessionmaker[Session],
) -> None:
    now = datetime.now(UTC)
    with session_factory() as session, session.begin():
        enqueue_opportunities(session, _ids(2), source="stream")
    with session_factory() as session:
        held = claim.claim_deals(
            session, steps=("fetch",), owner="a", now=now, lease=LEASE, limit=2
        )
    later = now + LEASE + timedelta(seconds=1)
    with session_factory() as session:
        assert claim.renew_leases(session, owner="a", until=later + LEASE, deal_ids=held) == 2
    with session_factory() as session:
        assert (
            claim.claim_deals(session, steps=("fetch",), owner="b", now=later, lease=LEASE, limit=2)
            == []
        )
    # "a" died: no renewal, and the lease runs out
    much_later = later + LEASE + timedelta(seconds=1)
    with session_factory() as session:
        assert (
            len(
                claim.claim_deals(
                    session, steps=("fetch",), owner="b", now=much_later, lease=LEASE, limit=2
                )
            )
            == 2
        )


def test_only_deals_in_work_are_renewed(session_factory: sessionmaker[Session]) -> None:
    """A deal a failed run or batch left leased is not renewed by the live worker's heartbeat:
    its lease runs out and another worker (or this one) claims it again."""
    now = datetime.now(UTC)
    with session_factory() as session, session.begin():
        enqueue_opportunities(session, _ids(2), source="stream")
    with session_factory() as session:
        in_work, left_behind = claim.claim_deals(
            session, steps=("fetch",), owner="a", now=now, lease=LEASE, limit=2
        )
    later = now + LEASE + timedelta(seconds=1)
    with session_factory() as session:
        assert claim.renew_leases(session, owner="a", until=later + LEASE, deal_ids=[in_work]) == 1
    with session_factory() as session:
        taken = claim.claim_deals(
            session, steps=("fetch",), owner="b", now=later, lease=LEASE, limit=2
        )
    assert taken == [left_behind]

"""Enqueueing, and claiming through the deal store, on a real database (SQLite and
PostgreSQL): claims are leases exclusive between workers until they run out, writes are
guarded by them, the account's and the customer's leases keep two deals apart."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.models import Deal, DealEvent
from sf_bridge.plan import CustomerIdentity
from sf_bridge.provisioning.outcome import DealView
from sf_bridge.provisioning.queue import (
    InvalidOpportunity,
    enqueue_opportunities,
    enqueue_snapshot,
)
from sf_bridge.provisioning.states import STEP_SUBSCRIPTION
from sf_bridge.provisioning.store import DealStore

LEASE = timedelta(seconds=30)
ACCOUNT = "001000000000001AAA"
ACCOUNT_B = "001000000000002AAA"


@dataclass
class Clock:
    """The time every worker of a test sees; moved on by the test."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now


def _worker(session_factory: sessionmaker[Session], name: str, clock: Clock) -> DealStore:
    return DealStore(session_factory, owner=name, lease=LEASE, clock=clock)


def _claim(store: DealStore, limit: int) -> list[int]:
    return [deal.id for deal in store.claim(("fetch",), limit)]


def _fail(store: DealStore, deal_id: int) -> bool:
    """A guarded write of a step's outcome (a retry): True when `store` still held the deal."""
    return store.fail(
        deal_id=deal_id,
        step="fetch",
        attempt_no=1,
        retry_at=store.clock() + timedelta(minutes=1),
        reason="Salesforce is busy",
        code="crm_unavailable",
        duration=1,
        stripe_request_id=None,
        idempotency_key=None,
        detail=None,
    )


def _identity(account: str, key: str) -> CustomerIdentity:
    return CustomerIdentity(account_id=account, name="Acme", customer_key=key)


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
    clock = Clock()
    a, b, c = (_worker(session_factory, name, clock) for name in "abc")
    with session_factory() as session, session.begin():
        enqueue_opportunities(session, _ids(10), source="stream")
    got_a = _claim(a, 6)
    got_b = _claim(b, 6)
    assert len(got_a) == 6
    assert len(got_b) == 4
    assert not set(got_a) & set(got_b)
    assert _claim(c, 10) == []
    clock.now += LEASE + timedelta(seconds=1)
    assert len(_claim(c, 10)) == 10
    # "a" lost its leases: its writes are refused, the new holder's go through.
    assert not _fail(a, got_a[0])
    assert _fail(c, got_a[0])
    [deal] = c.load([got_a[0]])
    assert (deal.status, deal.locked_by) == ("retrying", None)


def test_concurrent_claimers_never_share_a_deal(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session, session.begin():
        enqueue_opportunities(session, _ids(40), source="stream")
    clock = Clock()
    barrier = threading.Barrier(4)
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        store = _worker(session_factory, name, clock)
        barrier.wait(timeout=10)
        while got := _claim(store, 3):
            with lock:
                claimed.extend(got)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(claimed) == sorted(set(claimed))
    assert len(claimed) == 40


def _deals(session_factory: sessionmaker[Session], store: DealStore, n: int) -> list[DealView]:
    with session_factory() as session, session.begin():
        enqueue_opportunities(session, _ids(n), source="stream")
    return store.claim(("fetch",), n)


def test_renewed_leases_hold_until_their_owner_stops_renewing(
    session_factory: sessionmaker[Session],
) -> None:
    clock = Clock()
    a, b = _worker(session_factory, "a", clock), _worker(session_factory, "b", clock)
    held = _deals(session_factory, a, 2)
    assert a.start(held[0], STEP_SUBSCRIPTION, account=ACCOUNT, identity=None)
    clock.now += LEASE + timedelta(seconds=1)
    assert a.renew([d.id for d in held], clock.now + LEASE) == 2
    assert _claim(b, 2) == []
    assert not b.start(held[1], STEP_SUBSCRIPTION, account=ACCOUNT, identity=None)
    # "a" died: no renewal, and the lease runs out
    clock.now += LEASE + timedelta(seconds=1)
    assert len(_claim(b, 2)) == 2


def test_only_deals_in_work_are_renewed(session_factory: sessionmaker[Session]) -> None:
    """A deal a failed run or batch left leased is not renewed by the live worker's heartbeat:
    its lease runs out and another worker (or this one) claims it again."""
    clock = Clock()
    a, b = _worker(session_factory, "a", clock), _worker(session_factory, "b", clock)
    in_work, left_behind = _deals(session_factory, a, 2)
    clock.now += LEASE + timedelta(seconds=1)
    assert a.renew([in_work.id], clock.now + LEASE) == 1
    assert _claim(b, 2) == [left_behind.id]

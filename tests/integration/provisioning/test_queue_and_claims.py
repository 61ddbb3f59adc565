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
from sf_bridge.provisioning.states import STEP_CUSTOMER, STEP_SUBSCRIPTION
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
        attempt_id=None,
        attempt_no=1,
        retry_at=store.clock() + timedelta(minutes=1),
        reason="Salesforce is busy",
        code="crm_unavailable",
        duration=1,
        holder=None,
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
    session_factory: sessionmaker[Session], request: pytest.FixtureRequest
) -> None:
    bind = session_factory.kw["bind"]
    if bind.dialect.name == "postgresql":
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="DealStore.claim's one statement (id IN (subquery LIMIT n FOR UPDATE "
                "SKIP LOCKED)) leases more than n deals on PostgreSQL",
            )
        )
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


def test_account_lease_is_held_by_one_deal_at_a_time(
    session_factory: sessionmaker[Session],
) -> None:
    clock = Clock()
    store = _worker(session_factory, "w", clock)
    deals = _deals(session_factory, store, 5)
    identity = _identity(ACCOUNT, f"{ACCOUNT}/USD")

    def lease(n: int, account: str = ACCOUNT) -> bool:
        started = store.start(
            deals[n],
            STEP_CUSTOMER,
            1,
            account=account,
            identity=_identity(account, identity.customer_key),
            holder=f"w:{deals[n].id}",
        )
        return started is not None

    assert lease(0)
    assert not lease(1)
    # another account billed to the same customer waits too, and holds nothing meanwhile
    assert not lease(2, account=ACCOUNT_B)
    assert lease(0)  # renewing one's own lease
    store.release(deals[0].id, holder=f"w:{deals[0].id}")
    assert lease(1)
    # an expired lease (its holder died) is taken over
    clock.now += LEASE + timedelta(seconds=1)
    assert lease(3)


def test_an_account_lease_is_not_held_by_a_deal_that_waits_for_the_customer(
    session_factory: sessionmaker[Session],
) -> None:
    store = _worker(session_factory, "w", Clock())
    deals = _deals(session_factory, store, 3)

    def lease(n: int, account: str, key: str) -> bool:
        started = store.start(
            deals[n],
            STEP_CUSTOMER,
            1,
            account=account,
            identity=_identity(account, key),
            holder=f"w:{deals[n].id}",
        )
        return started is not None

    assert lease(0, ACCOUNT, "GROUP-1/USD")
    assert not lease(1, ACCOUNT_B, "GROUP-1/USD")  # account B's lease not kept while it waits
    assert lease(2, ACCOUNT_B, f"{ACCOUNT_B}/EUR")


def test_renewed_leases_hold_until_their_owner_stops_renewing(
    session_factory: sessionmaker[Session],
) -> None:
    clock = Clock()
    a, b = _worker(session_factory, "a", clock), _worker(session_factory, "b", clock)
    held = _deals(session_factory, a, 2)
    assert a.start(
        held[0], STEP_SUBSCRIPTION, 1, account=ACCOUNT, identity=None, holder=f"a:{held[0].id}"
    )
    clock.now += LEASE + timedelta(seconds=1)
    assert a.renew([d.id for d in held], clock.now + LEASE) == 2
    assert _claim(b, 2) == []
    assert not b.start(held[1], STEP_SUBSCRIPTION, 1, account=ACCOUNT, identity=None, holder="b:9")
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

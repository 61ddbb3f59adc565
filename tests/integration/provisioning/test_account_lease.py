"""The account's lease on the deal row (SQLite and PostgreSQL): one deal of an account, or of
a customers row accounts share, in a Stripe step at a time, across workers and replicas."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.models import Customer, Deal
from sf_bridge.provisioning.outcome import DealView, Outcome
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.states import DEAL_STEPS
from sf_bridge.provisioning.store import DealStore, Started
from tests.fixtures.provisioning import make_plan

LEASE = timedelta(seconds=15)
ACCOUNT = "001000000000001AAA"
ACCOUNT_B = "001000000000002AAA"


def _ids(n: int) -> list[str]:
    return [f"0060000000{i:05d}AAA" for i in range(n)]


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def _mapped(
    factory: sessionmaker[Session], opportunities: list[str], **plan_options: object
) -> None:
    """The deals are mapped: their next step is the customer step."""
    with factory() as session, session.begin():
        enqueue_opportunities(session, opportunities, source="stream")
        for opp in opportunities:
            session.execute(
                update(Deal)
                .where(Deal.opportunity_id == opp)
                .values(
                    status="mapped",
                    current_step="customer",
                    plan=make_plan(opp, **plan_options).to_dict(),  # type: ignore[arg-type]
                )
            )


def _start(store: DealStore, deal: DealView) -> Started | None:
    plan = deal.plan_or_fail()
    return store.start(deal, "customer", account=plan.customer.account_id, identity=plan.customer)


def test_one_deal_of_an_account_in_a_stripe_step_at_a_time(
    session_factory: sessionmaker[Session],
) -> None:
    clock = Clock()
    _mapped(session_factory, _ids(2))
    a = DealStore(session_factory, owner="a", lease=LEASE, clock=clock)
    b = DealStore(session_factory, owner="b", lease=LEASE, clock=clock)
    first, second = a.claim(DEAL_STEPS, 10)  # the account is known only once mapped
    started = _start(a, first)
    assert started is not None
    assert started.deal is not None
    assert not started.resumed  # nothing of this customer was requested before
    assert _start(a, second) is None  # busy: nothing written
    with session_factory() as session:
        row = session.get(Deal, second.id)
        assert row is not None
        assert (row.account_until, row.stripe_requested) == (None, None)
        customer = session.scalars(select(Customer)).one()
        assert customer.create_requested_at is not None  # marked before the request
    assert a.reschedule(second.id, timedelta(0))
    clock.now += timedelta(seconds=1)
    assert [d.id for d in b.claim(DEAL_STEPS, 10)] == [second.id]  # its account is not known
    b.release(second.id)
    with session_factory() as session, session.begin():  # as after an earlier attempt
        session.execute(update(Deal).where(Deal.id == second.id).values(account_id=ACCOUNT))
    # Another worker does not claim a deal of the account while its lease is held.
    assert b.claim(DEAL_STEPS, 10) == []
    # The customer step commits and its next step (subscription) keeps the lease.
    committed = a.commit(
        started.deal,
        "customer",
        Outcome(changes={"stripe_customer_id": "cus_1"}, stripe_customer_id="cus_1"),
        status="customer_ready",
        next_step="subscription",
        attempt_no=1,
        duration=5,
        detail={},
        before_commit=lambda: None,
        start_next=True,
    )
    assert committed is not None
    view, following = committed
    assert following is not None
    assert not following.resumed
    assert b.claim(DEAL_STEPS, 10) == []
    # The worker dies: its leases run out, and the other deal of the account goes ahead.
    clock.now += LEASE + timedelta(seconds=1)
    taken = {d.id: d for d in b.claim(DEAL_STEPS, 10)}
    assert set(taken) == {first.id, second.id}
    again = _start(b, taken[second.id])
    assert again is not None
    assert again.resumed  # an earlier deal of this customer may have created it
    assert _start(b, taken[first.id]) is None
    # A lost lease commits nothing.
    assert (
        a.commit(
            view,
            "subscription",
            Outcome(changes={"stripe_subscription_id": "sub_1"}),
            status="subscription_created",
            next_step="invoice",
            attempt_no=1,
            duration=5,
            detail={},
            before_commit=lambda: None,
        )
        is None
    )


def test_a_customers_row_shared_by_two_accounts_is_leased_with_them(
    session_factory: sessionmaker[Session],
) -> None:
    clock = Clock()
    opp_a, opp_b = _ids(2)
    _mapped(session_factory, [opp_a], customer_key="GROUP-1/USD")
    _mapped(session_factory, [opp_b], account_id=ACCOUNT_B, customer_key="GROUP-1/USD")
    store = DealStore(session_factory, owner="a", lease=LEASE, clock=clock)
    first, second = store.claim(DEAL_STEPS, 10)
    assert _start(store, first) is not None
    assert _start(store, second) is None  # another account, the same Stripe customer
    store.release(first.id)
    assert _start(store, second) is not None


def test_replicas_starting_deals_of_one_account_at_once_let_one_in(
    session_factory: sessionmaker[Session],
) -> None:
    """Several workers (replicas on PostgreSQL) each hold a deal of one account and start it
    at the same moment: exactly one takes the account's lease."""
    clock = Clock()
    n = 4
    _mapped(session_factory, _ids(n))
    stores = [DealStore(session_factory, owner=f"w{i}", lease=LEASE, clock=clock) for i in range(n)]
    held = [store.claim(DEAL_STEPS, 1) for store in stores]
    assert all(len(h) == 1 for h in held)
    barrier = threading.Barrier(n)
    results: list[bool] = []
    guard = threading.Lock()

    def go(store: DealStore, deal: DealView) -> None:
        barrier.wait(timeout=10)
        started = _start(store, deal)
        with guard:
            results.append(started is not None)

    threads = [
        threading.Thread(target=go, args=(store, h[0]))
        for store, h in zip(stores, held, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == [False] * (n - 1) + [True]
    with session_factory() as session:
        holding = session.scalars(select(Deal).where(Deal.account_until.is_not(None))).all()
    assert len(holding) == 1

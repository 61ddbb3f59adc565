"""The writes of many deals in one transaction (`sf_bridge.provisioning.group_commit`): a deal
whose lease was lost inside a batch commits nothing while the others commit; a crash between
building a batch and committing it commits none of it, and a restart finishes every deal with
one customer, one subscription and one invoice each."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, update

from sf_bridge.db.models import Deal, StepAttempt
from sf_bridge.provisioning.outcome import DealView, Outcome
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.runner import StepHooks
from sf_bridge.provisioning.states import (
    STATUS_AFTER,
    STEP_INVOICE,
    STEP_SUBSCRIPTION,
    STEP_WRITE_BACK,
)
from sf_bridge.provisioning.store import DealStore
from tests.fixtures.provisioning import Harness, drain, make_plan, settled

OPPS = ["006000000000031AAA", "006000000000032AAA", "006000000000033AAA"]
LEASE = timedelta(minutes=1)


class SimulatedCrash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the worker handles it."""


def _deals_at(h: Harness, step: str) -> list[int]:
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, OPPS, source="test")
        session.execute(
            update(Deal).values(
                status="retrying", current_step=step, account_id="001000000000001AAA"
            )
        )
        return list(session.scalars(select(Deal.id).order_by(Deal.id)))


def _store(h: Harness, owner: str) -> DealStore:
    return DealStore(h.session_factory, owner=owner, lease=LEASE, clock=h.clock)


def _commit_invoice(
    store: DealStore, deal: DealView, committed: list[int], before: Any = None
) -> None:
    outcome = Outcome(changes={"stripe_invoice_id": f"in_{deal.id}", "invoice_status": "open"})
    store.commit(
        deal,
        STEP_INVOICE,
        outcome,
        status=STATUS_AFTER[STEP_INVOICE],
        next_step=STEP_WRITE_BACK,
        attempt_no=1,
        duration=5,
        detail={},
        before_commit=before or (lambda: None),
        defer=True,
        after_commit=lambda: committed.append(deal.id),
    )


def _steps(h: Harness) -> dict[int, str | None]:
    with h.session_factory() as session:
        return dict(session.execute(select(Deal.id, Deal.current_step)).all())  # type: ignore[arg-type]


def _attempted(h: Harness) -> list[int]:
    with h.session_factory() as session:
        return sorted(session.scalars(select(StepAttempt.deal_id)))


def test_a_deal_whose_lease_was_lost_inside_a_batch_commits_nothing(harness: Harness) -> None:
    h = harness
    ids = _deals_at(h, STEP_INVOICE)
    store = _store(h, "w1")
    views = store.claim((STEP_INVOICE,), 10)
    assert [v.id for v in views] == ids
    committed: list[int] = []
    for view in views:
        _commit_invoice(store, view, committed)
    assert store.group.pending() == 3
    assert set(_steps(h).values()) == {STEP_INVOICE}  # deferred: nothing written yet
    # The second deal's lease runs out and another worker takes it before the batch commits.
    with h.session_factory() as session, session.begin():
        session.execute(update(Deal).where(Deal.id == ids[1]).values(locked_by="w2"))

    store.flush()

    assert _steps(h) == {ids[0]: STEP_WRITE_BACK, ids[1]: STEP_INVOICE, ids[2]: STEP_WRITE_BACK}
    assert sorted(committed) == [ids[0], ids[2]]
    assert _attempted(h) == [ids[0], ids[2]]
    assert h.deal(OPPS[1]).stripe_invoice_id is None
    assert store.group.pending() == 0


def test_a_crash_between_building_and_committing_a_batch_commits_none_of_it(
    harness: Harness,
) -> None:
    h = harness
    ids = _deals_at(h, STEP_INVOICE)
    store = _store(h, "w1")
    views = store.claim((STEP_INVOICE,), 10)
    committed: list[int] = []

    def crash() -> None:
        raise SimulatedCrash("between the batch's statements and its commit")

    for view in views:
        _commit_invoice(store, view, committed, before=crash if view.id == ids[1] else None)
    with pytest.raises(SimulatedCrash):
        store.flush()

    assert set(_steps(h).values()) == {STEP_INVOICE}
    assert committed == []
    assert _attempted(h) == []
    h.clock.advance(120)  # the dead worker's leases run out: every deal is claimable again
    assert [v.id for v in _store(h, "w2").claim((STEP_INVOICE,), 10)] == ids


def test_deferred_outcomes_ride_in_the_next_transaction(harness: Harness) -> None:
    """Two finished outcomes waiting, then a third deal's commit that marks its next Stripe
    step: one transaction holds all three, and the mark is committed when `commit` returns."""
    h = harness
    ids = _deals_at(h, STEP_INVOICE)
    with h.session_factory() as session, session.begin():
        session.execute(update(Deal).where(Deal.id == ids[2]).values(current_step="subscription"))
    store = _store(h, "w1")
    views = {v.id: v for v in store.claim((STEP_INVOICE, STEP_SUBSCRIPTION), 10)}
    committed: list[int] = []
    _commit_invoice(store, views[ids[0]], committed)
    _commit_invoice(store, views[ids[1]], committed)
    engine = h.session_factory.kw["bind"]
    began: list[int] = []

    def count(_conn: Any) -> None:
        began.append(1)

    event.listen(engine, "begin", count)
    try:
        result = store.commit(
            views[ids[2]],
            STEP_SUBSCRIPTION,
            Outcome(changes={"stripe_subscription_id": "sub_3"}),
            status=STATUS_AFTER[STEP_SUBSCRIPTION],
            next_step=STEP_INVOICE,
            attempt_no=1,
            duration=5,
            detail={},
            before_commit=lambda: None,
            start_next=True,
            defer=True,  # not deferred: the next step is marked before its Stripe request
        )
    finally:
        event.remove(engine, "begin", count)
    assert result is not None
    assert len(began) == 1
    assert sorted(committed) == ids[:2]
    deal = h.deal(OPPS[2])
    assert (deal.current_step, deal.stripe_requested) == (STEP_INVOICE, STEP_INVOICE)
    assert deal.account_until is not None


def test_a_crash_in_a_batch_of_a_burst_then_restart_creates_nothing_twice(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h = stripe_harness  # four worker threads
    for n, opp in enumerate(OPPS):
        h.add_opportunity(make_plan(opp, account_id=f"00100000000000{n}AAA"))
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, OPPS, source="test")
    fired: list[bool] = []

    def crash(step: str, _deal_id: int) -> None:
        if step == STEP_INVOICE and not fired:
            fired.append(True)
            raise SimulatedCrash("before the batch holding an invoice commit")

    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=StepHooks(before_commit=crash), owner="first"), settled(h, *OPPS))
    h.clock.advance(120)
    drain(h.worker(owner="restarted"), settled(h, *OPPS))

    assert set(h.statuses().values()) == {"done"}
    emu = provisioning_emulator
    assert (emu.count("customer"), emu.count("subscription"), emu.count("invoice")) == (3, 3, 3)

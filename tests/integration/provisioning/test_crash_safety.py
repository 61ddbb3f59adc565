"""A crash just before or just after any step's commit, then a restart: the deal completes and
Stripe holds exactly one customer, one subscription and one invoice for it."""

from __future__ import annotations

from typing import Any

import pytest

from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.runner import StepHooks
from sf_bridge.provisioning.states import STEPS
from tests.fixtures.provisioning import Harness, drain, make_plan, settled

OPP = "006000000000001AAA"


class SimulatedCrash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the worker handles it."""


def crash_at(step: str, phase: str) -> StepHooks:
    fired: list[bool] = []

    def hook(at: str, _deal_id: int) -> None:
        if at == step and not fired:
            fired.append(True)
            raise SimulatedCrash(f"{phase} commit of {step}")

    if phase == "before":
        return StepHooks(before_commit=hook)
    return StepHooks(after_commit=hook)


@pytest.mark.parametrize("phase", ["before", "after"])
@pytest.mark.parametrize("step", STEPS)
def test_crash_around_a_commit_then_restart_creates_nothing_twice(
    stripe_harness: Harness, provisioning_emulator: Any, step: str, phase: str
) -> None:
    h = stripe_harness
    h.add_opportunity(make_plan(OPP))
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [OPP], source="test")

    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=crash_at(step, phase), owner="first"), settled(h, OPP))

    h.clock.advance(120)  # the dead worker's leases expire
    drain(h.worker(owner="restarted"), settled(h, OPP))

    deal = h.deal(OPP)
    assert deal.status == "done", deal.last_error
    emu = provisioning_emulator
    assert emu.count("customer") == 1
    assert emu.count("subscription") == 1
    assert emu.count("invoice") == 1
    invoice = emu.get(deal.stripe_invoice_id)
    assert invoice["status"] == "open"
    assert deal.hosted_invoice_url == invoice["hosted_invoice_url"]


@pytest.mark.parametrize("step", ["customer", "subscription", "invoice"])
def test_crash_before_commit_with_search_lagging_relies_on_the_idempotency_key(
    stripe_harness: Harness, provisioning_emulator: Any, step: str
) -> None:
    """Stripe's search is eventually consistent: right after a crash it may not find what the
    lost attempt created. The retry then sends the same request with the same key, and Stripe
    answers with the object already created."""
    h, emu = stripe_harness, provisioning_emulator
    emu.faults.search_lag_seconds = 3600
    h.add_opportunity(make_plan(OPP))
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [OPP], source="test")
    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=crash_at(step, "before"), owner="first"), settled(h, OPP))
    h.clock.advance(120)
    drain(h.worker(owner="restarted"), settled(h, OPP))
    assert h.deal(OPP).status == "done"
    assert emu.count("customer") == 1
    assert emu.count("subscription") == 1
    assert emu.count("invoice") == 1


def test_a_deal_cancelled_between_steps_stays_cancelled(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """The subscription ends (webhook or overdue policy) while the worker is between two
    steps: the worker must not move the deal on and overwrite `cancelled`, nor grant."""
    from sqlalchemy import select

    from sf_bridge.db.models import EntitlementGrant
    from sf_bridge.invoices.records import record_subscription_ended

    h = stripe_harness
    h.add_opportunity(make_plan(OPP))
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [OPP], source="test")

    def cancel_after_invoice(step: str, _deal_id: int) -> None:
        if step == "invoice":
            subscription_id = h.deal(OPP).stripe_subscription_id
            assert subscription_id
            with h.session_factory() as session, session.begin():
                record_subscription_ended(session, subscription_id, "test", how="webhook")

    worker = h.worker(hooks=StepHooks(after_commit=cancel_after_invoice))

    def cancelled() -> bool:
        return h.statuses().get(OPP) == "cancelled"

    drain(worker, cancelled)
    for _ in range(3):  # nothing is left for any worker to do with it
        worker.run_once()
    assert h.deal(OPP).status == "cancelled"
    with h.session_factory() as session:
        active = session.scalars(
            select(EntitlementGrant).where(EntitlementGrant.active.is_(True))
        ).all()
    assert active == []
    assert provisioning_emulator.count("subscription") == 1

"""Batching, write-back outcomes, replay after a changed deal, and the long-running worker."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from sf_bridge.crm.port import InMemoryCrm, OpportunityUpdate, WriteBackResult
from sf_bridge.db.models import StepAttempt
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.replay import replay
from tests.fixtures.provisioning import Harness, drain, make_plan, opportunity, settled


def _enqueue(h: Harness, *ids: str) -> list[str]:
    with h.session_factory() as session, session.begin():
        return enqueue_opportunities(session, list(ids), source="test")


@dataclass
class CountingCrm(InMemoryCrm):
    fetch_calls: int = 0
    write_calls: int = 0
    refuse: dict[str, WriteBackResult] = field(default_factory=dict)

    def fetch_opportunities(self, opportunity_ids: list[str]) -> list[dict[str, Any]]:
        self.fetch_calls += 1
        return super().fetch_opportunities(opportunity_ids)

    def write_back(self, updates: list[OpportunityUpdate]) -> list[WriteBackResult]:
        self.write_calls += 1
        results = super().write_back([u for u in updates if u.opportunity_id not in self.refuse])
        return results + [
            self.refuse.pop(u.opportunity_id) for u in updates if u.opportunity_id in self.refuse
        ]


def test_salesforce_is_called_once_per_batch(harness: Harness) -> None:
    h = harness
    h.crm = CountingCrm()
    opps = [f"0060000000000{n:02d}AAA" for n in range(20)]
    for n, opp in enumerate(opps):
        h.add_opportunity(make_plan(opp, account_id=f"0010000000000{n:02d}AAA"))
    _enqueue(h, *opps)
    worker = h.worker()
    worker.write_back_linger = 600  # write back once the pipeline has drained, however slow
    drain(worker, settled(h, *opps))
    assert set(h.statuses().values()) == {"done"}
    crm = h.crm
    assert isinstance(crm, CountingCrm)
    assert crm.fetch_calls == 1
    assert crm.write_calls == 1


def test_write_back_refusals_retry_or_park(harness: Harness) -> None:
    h = harness
    crm = CountingCrm()
    h.crm = crm
    flaky, refused = "006000000000001AAA", "006000000000002AAA"
    for opp in (flaky, refused):
        h.add_opportunity(make_plan(opp))
    crm.refuse[flaky] = WriteBackResult(flaky, False, "UNABLE_TO_LOCK_ROW", retryable=True)
    crm.refuse[refused] = WriteBackResult(
        refused, False, "INVALID_FIELD_FOR_INSERT_UPDATE: Invoice_URL__c", retryable=False
    )
    _enqueue(h, flaky, refused)
    drain(h.worker(), settled(h, flaky, refused))
    assert h.deal(flaky).status == "done"
    parked = h.deal(refused)
    assert parked.status == "needs_attention"
    assert parked.current_step == "write_back"
    assert "Invoice_URL__c" in (parked.last_error or "")
    # Fixing the field and replaying writes back without touching Stripe again.
    calls = h.billing.total_calls  # type: ignore[union-attr]
    replay(h.session_factory, [refused], mappings=h.mappings)
    drain(h.worker(), settled(h, refused))
    assert h.deal(refused).status == "done"
    assert h.billing.total_calls == calls  # type: ignore[union-attr]
    assert crm.written[refused]["Provisioning_Status__c"] == "Provisioned"


def test_replay_refetches_and_remaps_a_changed_deal(harness: Harness) -> None:
    h = harness
    opp = "006000000000003AAA"
    h.mappings.plans[opp] = []  # maps to nothing yet: a mapping error
    h.crm.opportunities[opp] = opportunity(opp)
    _enqueue(h, opp)
    drain(h.worker(), settled(h, opp))
    assert h.deal(opp).status == "needs_attention"
    assert h.deal(opp).current_step == "map"

    h.crm.opportunities[opp] = {**opportunity(opp), "Seats__c": 12}  # sales fixed the deal
    h.mappings.set_plan(make_plan(opp))
    [outcome] = replay(h.session_factory, failed=True, mappings=h.mappings, crm=h.crm)
    assert outcome.from_step == "map"
    drain(h.worker(), settled(h, opp))
    deal = h.deal(opp)
    assert deal.status == "done", deal.last_error
    assert deal.opportunity is not None
    assert deal.opportunity["Seats__c"] == 12


def test_run_stops_promptly_and_leaves_no_lease_behind(harness: Harness) -> None:
    h = harness
    opps = [f"0060000000001{n:02d}AAA" for n in range(6)]
    for opp in opps:
        h.add_opportunity(make_plan(opp))
    _enqueue(h, *opps)
    worker = h.worker()
    worker.poll_interval = 0.01
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 20
    while not settled(h, *opps)() and time.monotonic() < deadline:
        stop.wait(0.01)
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert set(h.statuses().values()) == {"done"}
    with h.session_factory() as session:
        running = session.execute(select(StepAttempt).where(StepAttempt.outcome == "running")).all()
    assert running == []

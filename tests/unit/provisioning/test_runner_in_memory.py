"""The runner over the in-memory store and billing port: a deal's steps, a crash before a
commit, a deal cancelled meanwhile, two deals of one account. No database."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker

from sf_bridge.billing.memory import InMemoryBilling
from sf_bridge.provisioning.memory_store import InMemoryStore
from sf_bridge.provisioning.prices import PriceCache
from sf_bridge.provisioning.retry import RetryPolicy
from sf_bridge.provisioning.runner import Provisioner, RunnerOptions, StepHooks
from sf_bridge.provisioning.states import DEAL_STEPS
from sf_bridge.provisioning.steps import StepContext
from tests.fixtures.provisioning import FAST_RETRY, make_plan

OPP = "006000000000001AAA"


class Crash(BaseException):
    """A crash of the process: no step handles it."""


def _now() -> datetime:
    return datetime.now(UTC)


def _provisioner(
    billing: InMemoryBilling, store: InMemoryStore, hooks: StepHooks | None = None
) -> Provisioner:
    plans = {OPP: make_plan(OPP), "006000000000002AAA": make_plan("006000000000002AAA")}
    return Provisioner(
        session_factory=sessionmaker(),
        ctx=StepContext(
            billing=billing,
            mappings_loader=lambda: None,
            mapper=lambda opp, _m: plans[opp["Id"]],
            prices=PriceCache(),
        ),
        policy=RetryPolicy(**{**FAST_RETRY.__dict__}),
        options=RunnerOptions(owner=store.owner, lease=store.lease),
        clock=_now,
        hooks=hooks,
        store=store,
    )


def _setup() -> tuple[InMemoryBilling, InMemoryStore]:
    billing = InMemoryBilling()
    billing.add_price("pro_monthly", 5000)
    store = InMemoryStore(owner="w1", lease=timedelta(seconds=15), clock=_now)
    store.add_deal(OPP, status="fetched", current_step="map", opportunity={"Id": OPP})
    return billing, store


def _run(prov: Provisioner) -> None:
    for deal_id in prov.claim(DEAL_STEPS, 10):
        prov.run_deal(deal_id, threading.Event())


def test_a_deal_runs_every_per_deal_step_and_waits_for_the_write_back() -> None:
    billing, store = _setup()
    _run(_provisioner(billing, store))
    row = store.deals[1]
    assert (row["status"], row["current_step"], row["locked_by"]) == (
        "entitled",
        "write_back",
        None,
    )
    assert row["stripe_subscription_id"].startswith("sub_")
    assert row["invoice_status"] == "open"
    assert [a["step"] for a in store.attempts] == [
        "map",
        "customer",
        "subscription",
        "invoice",
        "entitlements",
    ]
    assert {a["outcome"] for a in store.attempts} == {"ok"}
    assert sorted(f for _d, f in store.grants) == ["seats", "sso"]
    assert row["account_until"] is None  # the account's lease went back with the invoice
    assert row["stripe_requested"] == "customer,subscription,invoice"


def test_a_crash_before_the_subscription_commit_creates_one_subscription() -> None:
    billing, store = _setup()

    def crash(step: str, _deal_id: int) -> None:
        if step == "subscription":
            raise Crash

    with pytest.raises(Crash):
        _run(_provisioner(billing, store, StepHooks(before_commit=crash)))
    assert store.deals[1]["stripe_subscription_id"] is None
    store.deals[1]["locked_until"] = None  # the lease of the crashed worker ran out
    _run(_provisioner(billing, store))
    assert store.deals[1]["status"] == "entitled"
    assert billing.calls["create_subscription"] == 1
    assert billing.calls["find_subscription"] >= 1  # the retry searched first


class CancelledMeanwhile(InMemoryBilling):
    """The deal is cancelled while its subscription request is under way."""

    store: InMemoryStore

    def create_subscription(self, spec: Any, *, idempotency_key: str) -> Any:
        assert self.store.cancel(1, "the opportunity is no longer won", "salesforce")
        return super().create_subscription(spec, idempotency_key=idempotency_key)


def test_a_deal_cancelled_during_a_step_stays_cancelled() -> None:
    _, store = _setup()
    billing = CancelledMeanwhile()
    billing.add_price("pro_monthly", 5000)
    billing.store = store
    _run(_provisioner(billing, store))
    assert store.deals[1]["status"] == "cancelled"
    assert store.deals[1]["stripe_subscription_id"] is None
    assert [e["kind"] for e in store.events] == ["cancelled"]
    # A replay of it finds it cancelled and leaves it so.
    assert not store.requeue(1, expected_status="cancelled", values={"status": "mapped"}, events=[])
    assert store.deals[1]["status"] == "cancelled"


def _hold_account(store: InMemoryStore) -> int:
    """Another worker's deal of the same account is in a Stripe step."""
    later = _now() + timedelta(minutes=1)
    return store.add_deal(
        "006000000000002AAA",
        status="customer_ready",
        current_step="subscription",
        account_id="001000000000001AAA",
        locked_by="w2",
        locked_until=later,
        account_until=later,
    )


def test_a_busy_account_reschedules_the_deal_and_takes_nothing() -> None:
    billing, store = _setup()
    store.deals[1].update(status="mapped", current_step="customer", plan=make_plan(OPP).to_dict())
    store.deals[1]["account_id"] = "001000000000001AAA"
    other = _hold_account(store)
    prov = _provisioner(billing, store)
    assert prov.claim(DEAL_STEPS, 10) == []  # the claim leaves it while its account is held
    store.deals[1]["account_id"] = None  # not known yet: claimed, and the start finds it busy
    _run(prov)
    row = store.deals[1]
    assert (row["status"], row["locked_by"], row["account_until"]) == ("mapped", None, None)
    assert row["next_attempt_at"] is not None
    assert billing.total_calls == 0
    assert store.deals[other]["account_until"] is not None


def test_a_mapped_deal_whose_account_is_busy_keeps_its_plan() -> None:
    billing, store = _setup()
    _hold_account(store)
    _run(_provisioner(billing, store))
    row = store.deals[1]
    assert (row["status"], row["current_step"], row["locked_by"]) == ("mapped", "customer", None)
    assert row["plan"] is not None
    assert row["next_attempt_at"] is not None
    assert billing.total_calls == 0
    assert [a["step"] for a in store.attempts] == ["map"]


def test_a_crash_before_the_customer_start_commits_leaves_the_deal_unmapped() -> None:
    """The map step's outcome rides in the customer step's start: a crash before that commit
    leaves nothing, and the retry maps again and creates one customer."""
    billing, store = _setup()

    def crash(step: str, _deal_id: int) -> None:
        if step == "map":
            raise Crash

    with pytest.raises(Crash):
        _run(_provisioner(billing, store, StepHooks(before_commit=crash)))
    row = store.deals[1]
    assert (row["status"], row["plan"], row["stripe_requested"]) == ("fetched", None, None)
    assert billing.total_calls == 0
    row["locked_until"] = None
    _run(_provisioner(billing, store))
    assert store.deals[1]["status"] == "entitled"
    assert billing.calls["create_customer"] == 1

"""Un-won (or `deals cancel`) while a Stripe request of the deal is in flight, and a crash
before or after each commit of the cancellation sequence: the real Stripe SDK against the
emulator, with its search lagging as Stripe documents (not read-after-write).

The end state is always one change in Stripe, never two, and never a live subscription on a
deal recorded as `skipped` or `cancelled`."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from sf_bridge.crm.port import OpportunityUpdate
from sf_bridge.db.models import Deal, DealEvent, EntitlementGrant
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.runner import StepHooks
from sf_bridge.provisioning.store import mark_unwon, queue_cancel
from tests.fixtures.provisioning import Harness, drain, make_plan, settled

LEASE = 30  # seconds, the harness workers' lease


class SimulatedCrash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the worker handles it."""


def _enqueue(h: Harness, opp: str) -> None:
    h.add_opportunity(make_plan(opp))
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [opp], source="test")


def _provision(h: Harness, opp: str) -> None:
    _enqueue(h, opp)
    drain(h.worker(), settled(h, opp))
    assert h.deal(opp).status == "done", h.deal(opp).last_error


def _unwin(h: Harness, opp: str) -> list[str]:
    with h.session_factory() as session, session.begin():
        return mark_unwon(session, [opp], reason="Moved to Closed Lost.", source="test")


def _events(h: Harness, deal_id: int) -> list[DealEvent]:
    with h.session_factory() as session:
        return list(
            session.scalars(
                select(DealEvent).where(DealEvent.deal_id == deal_id).order_by(DealEvent.id)
            )
        )


def _kinds(h: Harness, deal_id: int) -> list[str]:
    return [e.kind for e in _events(h, deal_id)]


def _grants(h: Harness, deal_id: int) -> list[EntitlementGrant]:
    with h.session_factory() as session:
        return list(
            session.scalars(select(EntitlementGrant).where(EntitlementGrant.deal_id == deal_id))
        )


def _stripe_events(emu: Any, type_: str, object_id: str) -> int:
    return sum(1 for e in emu.events(type_) if e["data"]["object"]["id"] == object_id)


def _subscriptions(emu: Any) -> list[dict[str, Any]]:
    with emu.store.lock:
        return [emu.get(i) for i in list(emu.store.objects["subscription"])]


def _in_flight(h: Harness, operation: str, opp: str, during: Any) -> dict[str, Any]:
    """Replaces the gateway's `operation` so that `during()` runs while its first request is
    in flight (after the step marked itself requested, before Stripe answers); what it
    returned is kept under "during"."""
    billing = h.billing
    assert billing is not None
    real = getattr(billing, operation)
    seen: dict[str, Any] = {}

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        setattr(billing, operation, real)  # once
        seen["during"] = during()
        return real(*args, **kwargs)

    setattr(billing, operation, wrapped)
    return seen


def _unwin_and_look(h: Harness, opp: str) -> Any:
    """Un-wins the deal, then another replica's worker looks for un-won deals at once."""

    def during() -> list[int]:
        assert _unwin(h, opp) == [opp]
        return h.worker(owner="replica").unwon.run_due()

    return during


# a request in flight when the deal is un-won ---------------------------------------------------


@pytest.mark.parametrize("policy", ["cancel", "review"])
def test_unwon_while_the_subscription_create_is_in_flight(
    stripe_harness: Harness, provisioning_emulator: Any, policy: str
) -> None:
    """The worker marked the subscription step requested and sent the create; the deal is
    un-won meanwhile. No replica may decide "nothing billed" before that request could have
    ended; after the old lease, the subscription it made is found (search lags: the list of
    the customer's subscriptions finds it) and cancelled, or the deal parked for review."""
    h, emu = stripe_harness, provisioning_emulator
    emu.faults.search_lag_seconds = 3600  # search never sees it during the test
    h.mappings.when_unwon = policy
    opp = "006000000000201AAA" if policy == "cancel" else "006000000000202AAA"
    _enqueue(h, opp)
    seen = _in_flight(h, "create_subscription", opp, _unwin_and_look(h, opp))
    worker = h.worker(owner="first")
    worker.run_once()

    assert seen["during"] == []  # not claimed while the request may be in flight
    assert emu.count("subscription") == 1  # the request went through
    deal = h.deal(opp)
    assert deal.status == "unwon"
    assert deal.stripe_subscription_id is None  # its answer was never committed
    unwon = [e for e in _events(h, deal.id) if e.kind == "unwon"]
    assert "waits_for_request_in_flight_until" in (unwon[-1].detail or {})
    worker.run_once()
    assert h.deal(opp).status == "unwon"  # still within the old lease

    h.clock.advance(LEASE + 1)
    drain(h.worker(owner="later"), lambda: h.deal(opp).status in ("cancelled", "needs_attention"))
    deal = h.deal(opp)
    (subscription,) = _subscriptions(emu)
    if policy == "cancel":
        assert deal.status == "cancelled"
        assert subscription["status"] == "canceled"
        assert emu.get(subscription["latest_invoice"])["status"] == "void"
        assert deal.stripe_subscription_id == subscription["id"]
        assert _stripe_events(emu, "customer.subscription.deleted", subscription["id"]) == 1
        assert _stripe_events(emu, "invoice.voided", subscription["latest_invoice"]) == 1
        assert h.crm.written[opp]["Provisioning_Status__c"] == "Cancelled"
    else:
        assert deal.status == "needs_attention"
        assert deal.last_error_code == "unwon_after_provisioning"
        assert subscription["status"] != "canceled"
    assert "skipped" not in _kinds(h, deal.id)
    assert not any(g.active for g in _grants(h, deal.id))
    assert emu.count("subscription") == 1


@pytest.mark.parametrize("policy", ["cancel", "review"])
def test_unwon_while_the_invoice_finalize_is_in_flight(
    stripe_harness: Harness, provisioning_emulator: Any, policy: str
) -> None:
    """The deal is un-won while its first invoice is being finalized: cancelling at once
    would find the invoice still a draft (not voidable) and leave it open once the finalize
    lands. After the old lease, the open invoice is voided and the subscription cancelled."""
    h, emu = stripe_harness, provisioning_emulator
    emu.faults.search_lag_seconds = 3600
    h.mappings.when_unwon = policy
    opp = "006000000000203AAA" if policy == "cancel" else "006000000000204AAA"
    _enqueue(h, opp)
    seen = _in_flight(h, "finalize_invoice", opp, _unwin_and_look(h, opp))
    h.worker(owner="first").run_once()

    assert seen["during"] == []
    deal = h.deal(opp)
    assert deal.status == "unwon"
    invoice_id = deal.stripe_invoice_id
    assert invoice_id
    assert emu.get(invoice_id)["status"] == "open"

    h.clock.advance(LEASE + 1)
    drain(h.worker(owner="later"), lambda: h.deal(opp).status in ("cancelled", "needs_attention"))
    deal = h.deal(opp)
    subscription = emu.get(deal.stripe_subscription_id)
    if policy == "cancel":
        assert deal.status == "cancelled"
        assert emu.get(invoice_id)["status"] == "void"
        assert subscription["status"] == "canceled"
        assert _stripe_events(emu, "invoice.voided", invoice_id) == 1
    else:
        assert deal.status == "needs_attention"
        assert deal.last_error_code == "unwon_after_provisioning"
        assert emu.get(invoice_id)["status"] == "open"
        assert subscription["status"] != "canceled"
    assert emu.count("subscription") == 1
    assert emu.count("invoice") == 1


def test_deals_cancel_while_the_subscription_create_is_in_flight(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """`deals cancel N` takes the lease back too: the cancellation waits for the old lease,
    then cancels the subscription the request in flight made (not "lost": nothing found)."""
    h, emu = stripe_harness, provisioning_emulator
    emu.faults.search_lag_seconds = 3600
    opp = "006000000000205AAA"
    _enqueue(h, opp)

    def during() -> list[int]:
        deal_id = h.deal(opp).id
        with h.session_factory() as session, session.begin():
            assert queue_cancel(session, deal_id, reason="customer walked away", actor="ana")
        return h.worker(owner="replica").unwon.run_due()

    seen = _in_flight(h, "create_subscription", opp, during)
    h.worker(owner="first").run_once()
    assert seen["during"] == []
    assert h.deal(opp).status == "cancelling"
    h.clock.advance(LEASE + 1)
    drain(h.worker(owner="later"), lambda: h.deal(opp).status == "cancelled")
    (subscription,) = _subscriptions(emu)
    assert subscription["status"] == "canceled"
    assert emu.get(subscription["latest_invoice"])["status"] == "void"


def test_a_deal_unwon_between_runs_is_decided_at_once(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """No request in flight (the deal rests, provisioned): nothing to wait for."""
    h = stripe_harness
    opp = "006000000000206AAA"
    _provision(h, opp)
    _unwin(h, opp)
    assert h.deal(opp).next_attempt_at is None
    assert h.worker(owner="replica").unwon.run_due() == [h.deal(opp).id]
    assert h.deal(opp).last_error_code == "unwon_after_provisioning"


def test_find_subscription_lists_the_customers_subscriptions_as_search_lags(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """Stripe's search is not read-after-write (stripe.com/docs/search, Data freshness); the
    list of the customer's subscriptions (`status=all`) is, canceled ones included."""
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000207AAA"
    emu.faults.search_lag_seconds = 3600
    _provision(h, opp)
    deal = h.deal(opp)
    billing = h.billing
    assert billing is not None
    assert deal.stripe_customer_id
    assert billing.find_subscription(sf_opportunity_id=opp) is None  # search: not yet
    found = billing.find_subscription(sf_opportunity_id=opp, customer=deal.stripe_customer_id)
    assert found is not None
    assert found.id == deal.stripe_subscription_id
    assert found.latest_invoice == deal.stripe_invoice_id
    billing.cancel_subscription(found.id, idempotency_key="test-cancel")
    again = billing.find_subscription(sf_opportunity_id=opp, customer=deal.stripe_customer_id)
    assert again is not None
    assert again.status == "canceled"
    other = billing.find_subscription(
        sf_opportunity_id="006000000000299AAA", customer=deal.stripe_customer_id
    )
    assert other is None


# a crash before or after each commit of the cancellation sequence ----------------------------

CANCEL_COMMITS = ("invoice_voided", "subscription_cancelled", "cancelled", "cancel_written_back")


@pytest.mark.parametrize("phase", ["before", "after"])
@pytest.mark.parametrize("commit", CANCEL_COMMITS)
def test_crash_around_each_commit_of_the_cancellation_then_restart(
    stripe_harness: Harness, provisioning_emulator: Any, commit: str, phase: str
) -> None:
    """policy `cancel`: the worker dies just before or just after one commit of the sequence
    (void, cancel, revoke + mark, write-back), another starts after its lease: one void, one
    cancel, this deal's grants only revoked, "Cancelled" written (again only when the crash
    fell between the write and its commit, with the same values)."""
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    opp, other = "006000000000211AAA", "006000000000212AAA"
    _provision(h, opp)
    _provision(h, other)
    target = h.deal(opp).id
    writes: list[OpportunityUpdate] = []
    real_write_back = h.crm.write_back

    def counting(updates: list[OpportunityUpdate]) -> Any:
        writes.extend(u for u in updates if u.opportunity_id == opp)
        return real_write_back(updates)

    h.crm.write_back = counting  # type: ignore[method-assign]
    fired: list[bool] = []

    def hook(at: str, deal_id: int) -> None:
        if at == commit and deal_id == target and not fired:
            fired.append(True)
            raise SimulatedCrash(f"{phase} the commit of {commit}")

    hooks = StepHooks(before_commit=hook) if phase == "before" else StepHooks(after_commit=hook)
    _unwin(h, opp)
    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=hooks, owner="crashing"), lambda: False)

    h.clock.advance(LEASE + 1)  # the dead worker's lease runs out
    drain(
        h.worker(owner="restarted"),
        lambda: h.deal(opp).status == "cancelled" and not h.deal(opp).writeback_pending,
    )
    worker = h.worker(owner="restarted")
    for _ in range(2):  # nothing left to do for it
        worker.run_once()

    deal = h.deal(opp)
    assert deal.status == "cancelled"
    assert _stripe_events(emu, "invoice.voided", deal.stripe_invoice_id) == 1
    assert _stripe_events(emu, "customer.subscription.deleted", deal.stripe_subscription_id) == 1
    assert emu.get(deal.stripe_invoice_id)["status"] == "void"
    assert emu.get(deal.stripe_subscription_id)["status"] == "canceled"
    kinds = _kinds(h, deal.id)
    assert kinds.count("invoice_voided") == 1
    assert kinds.count("subscription_cancelled") == 1
    assert kinds.count("cancelled") == 1
    assert _grants(h, deal.id)
    assert not any(g.active for g in _grants(h, deal.id))
    kept = h.deal(other)
    assert kept.status == "done"
    assert all(g.active for g in _grants(h, kept.id))
    assert emu.get(kept.stripe_subscription_id)["status"] != "canceled"
    assert emu.get(kept.stripe_invoice_id)["status"] == "open"
    cancelled_writes = [u for u in writes if u.fields.get("Provisioning_Status__c") == "Cancelled"]
    between = commit == "cancel_written_back" and phase == "before"
    assert len(cancelled_writes) == (2 if between else 1)
    assert all(u.fields == cancelled_writes[0].fields for u in cancelled_writes)
    assert "Moved to Closed Lost." in cancelled_writes[0].fields["Provisioning_Error__c"]


# the sandbox org: a rep moves the deal to Closed Lost while the create is in flight -----------


def test_closed_lost_in_the_org_while_the_create_is_in_flight_is_cancelled(
    session_factory: Any,
) -> None:
    """The real Salesforce client, mapping engine, Stripe SDK and worker: the rep moves the
    deal to Closed Lost in the sandbox org while the worker's subscription create is in
    flight, and the sweep's un-won check records it at once (QueryAll). No replica skips it;
    after the old lease its subscription is cancelled, its invoice voided and "Cancelled"
    written onto the opportunity."""
    from dataclasses import replace
    from datetime import timedelta
    from pathlib import Path

    from sf_bridge.billing.stripe_gateway import StripeGateway
    from sf_bridge.config import Settings
    from sf_bridge.crm.salesforce import SalesforceCrm
    from sf_bridge.intake.sweep import Sweeper
    from sf_bridge.mapping import load_mappings
    from sf_bridge.provisioning.retry import request_retrier
    from sf_bridge.provisioning.worker import Worker
    from sf_bridge.sandbox.salesforce_org import SalesforceSandbox, prepare_for_mappings
    from sf_bridge.sandbox.stripe_emulator import StripeEmulator
    from tests.fixtures.provisioning import FAST_RETRY, TestClock
    from tests.integration.intake.conftest import API_VERSION, credentials_for

    mappings = replace(
        load_mappings(Path(__file__).resolve().parents[3] / "mappings"), when_unwon="cancel"
    )
    org = SalesforceSandbox(port=0, long_poll_seconds=1.0).start()
    try:
        prepare_for_mappings(org, mappings)
        with StripeEmulator() as emu:
            emu.seed_catalog(mappings.catalog_prices())
            emu.faults.search_lag_seconds = 3600
            billing = StripeGateway(
                emu.api_key, api_base=emu.url, retry=request_retrier(FAST_RETRY)
            )
            crm = SalesforceCrm(credentials_for(org), api_version=API_VERSION, fields=mappings)
            settings = Settings(SF_BRIDGE_WORKER_CONCURRENCY=2, SF_BRIDGE_MAX_ATTEMPTS=6)  # type: ignore[call-arg]
            clock = TestClock()

            def worker(owner: str) -> Worker:
                return Worker(
                    settings,
                    session_factory,
                    billing,
                    crm,
                    lambda: mappings,
                    policy=FAST_RETRY,
                    clock=clock,
                    owner=owner,
                    lease=timedelta(seconds=LEASE),
                )

            sweeper = Sweeper(
                crm, session_factory, lambda *_a, **_k: [], unwon_among=crm.unwon_among
            )
            account = org.create_account("Lost Co", Billing_Email__c="ap@lost.example")
            opp = org.create_opportunity(
                account,
                "Lost Co - Team",
                [{"product_code": "SB-TEAM-M", "quantity": 5, "unit_price": 15.0}],
                stage="Closed Won",
                currency="USD",
                Payment_Method__c="Invoice",
                Payment_Terms__c="Net 30",
            )
            with session_factory() as session, session.begin():
                enqueue_opportunities(session, [opp], source="test")
            real = billing.create_subscription
            seen: dict[str, Any] = {}

            def in_flight(*args: Any, **kwargs: Any) -> Any:
                billing.create_subscription = real  # type: ignore[method-assign]
                org.lose_deal(opp)
                seen["marked"] = sweeper._check_unwon()
                seen["claimed"] = worker("replica").unwon.run_due()
                return real(*args, **kwargs)

            billing.create_subscription = in_flight  # type: ignore[method-assign]
            worker("first").run_once()
            assert seen == {"marked": [opp], "claimed": []}
            assert emu.count("subscription") == 1

            clock.advance(LEASE + 1)

            def cancelled() -> bool:
                with session_factory() as session:
                    deal = session.scalars(select(Deal).where(Deal.opportunity_id == opp)).one()
                    return deal.status == "cancelled" and not deal.writeback_pending

            drain(worker("later"), cancelled)
            (subscription,) = _subscriptions(emu)
            assert subscription["status"] == "canceled"
            assert emu.get(subscription["latest_invoice"])["status"] == "void"
            assert org.get_opportunity(opp)["SF_Bridge_Status__c"] == "Cancelled"
    finally:
        org.stop()


def test_a_draft_first_invoice_is_finalized_once_then_voided_when_an_answer_is_lost(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """Un-won before its invoice step: the first invoice is still a draft, which Stripe does
    not void. It is finalized (`auto_advance` false), then voided; the finalize's answer lost
    once (it reached Stripe) is retried without a second finalize."""
    from sf_bridge.errors import TransientError

    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    opp = "006000000000208AAA"
    _enqueue(h, opp)
    _in_flight(h, "create_subscription", opp, lambda: _unwin(h, opp))
    h.worker(owner="first").run_once()
    (subscription,) = _subscriptions(emu)
    invoice_id = subscription["latest_invoice"]
    assert emu.get(invoice_id)["status"] == "draft"

    billing = h.billing
    assert billing is not None
    real = billing.finalize_invoice
    sent: list[dict[str, Any]] = []

    def lost_once(invoice: str, **kwargs: Any) -> Any:
        sent.append(kwargs)
        answer = real(invoice, **kwargs)
        if len(sent) == 1:
            raise TransientError("connection reset after Stripe finalized it")
        return answer

    billing.finalize_invoice = lost_once  # type: ignore[method-assign]
    h.clock.advance(LEASE + 1)
    worker = h.worker(owner="later")
    worker.unwon.run_due()
    assert h.deal(opp).status == "unwon"  # given back, to be retried
    h.clock.advance(60)
    drain(worker, lambda: h.deal(opp).status == "cancelled")
    invoice = emu.get(invoice_id)
    assert invoice["status"] == "void"
    assert invoice["auto_advance"] is False
    assert sent[0]["auto_advance"] is False
    assert _stripe_events(emu, "invoice.finalized", invoice_id) == 1
    assert _stripe_events(emu, "invoice.voided", invoice_id) == 1
    assert emu.get(subscription["id"])["status"] == "canceled"

"""Provisioning through the real Stripe SDK against the Stripe emulator."""

from __future__ import annotations

import threading
from typing import Any

from sf_bridge.billing.stripe_gateway import StripeGateway
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.ratelimit import TokenBucket
from sf_bridge.provisioning.replay import replay
from sf_bridge.provisioning.retry import request_retrier
from sf_bridge.sandbox.stripe_emulator import Faults
from tests.fixtures.provisioning import FAST_RETRY, Harness, drain, make_plan, settled


def _enqueue(h: Harness, *ids: str) -> list[str]:
    with h.session_factory() as session, session.begin():
        return enqueue_opportunities(session, list(ids), source="test")


def test_invoice_deal_has_an_open_invoice_with_both_links(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000001AAA"
    # A negotiated price (4,500 instead of 5,000) goes in as price_data on the item.
    h.add_opportunity(make_plan(opp, unit_amount=4500, quantity=2))
    _enqueue(h, opp)
    drain(h.worker(), settled(h, opp))

    deal = h.deal(opp)
    assert deal.status == "done", deal.last_error
    invoice = emu.get(deal.stripe_invoice_id)
    assert invoice["status"] == "open"
    assert invoice["hosted_invoice_url"]
    assert invoice["invoice_pdf"]
    assert deal.hosted_invoice_url == invoice["hosted_invoice_url"]
    assert deal.invoice_pdf == invoice["invoice_pdf"]
    assert deal.invoice_due_at is not None
    assert invoice["amount_due"] == 9000
    subscription = emu.get(deal.stripe_subscription_id)
    assert subscription["collection_method"] == "send_invoice"
    assert subscription["days_until_due"] == 30
    assert subscription["metadata"] == {
        "sf_opportunity_id": opp,
        "sf_account_id": "001000000000001AAA",
        "mapping_version": "v1",
    }
    customer = emu.get(deal.stripe_customer_id)
    assert customer["metadata"]["sf_account_id"] == "001000000000001AAA"


def test_charge_automatically_without_card_leaves_the_first_invoice_open_with_its_link(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000002AAA"
    h.add_opportunity(make_plan(opp, collection_method="charge_automatically"))
    _enqueue(h, opp)
    drain(h.worker(), settled(h, opp))
    deal = h.deal(opp)
    assert deal.status == "done", deal.last_error
    invoice = emu.get(deal.stripe_invoice_id)
    assert invoice["status"] == "open"
    assert deal.hosted_invoice_url == invoice["hosted_invoice_url"]


def test_custom_plan_creates_no_subscription(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000003AAA"
    h.add_opportunity(make_plan(opp, custom=True))
    _enqueue(h, opp)
    drain(h.worker(), settled(h, opp))
    assert h.deal(opp).status == "done"
    assert emu.count("subscription") == 0
    assert emu.count("invoice") == 0


def test_inactive_price_parks_then_replay_after_fixing_the_mapping_completes(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000004AAA"
    emu.archive_price("pro_monthly")
    h.add_opportunity(make_plan(opp))
    _enqueue(h, opp)
    worker = h.worker()
    drain(worker, settled(h, opp))

    deal = h.deal(opp)
    assert deal.status == "needs_attention"
    assert deal.current_step == "subscription"
    assert deal.last_error is not None
    assert "'pro_monthly'" in deal.last_error
    assert "archived (inactive)" in deal.last_error
    assert "replay" in deal.last_error
    assert emu.count("customer") == 1

    # RevOps points the plan at an active price: a new mapping version.
    h.mappings.version = "v2"
    h.mappings.set_plan(make_plan(opp, lookup_key="team_monthly"))
    outcomes = replay(h.session_factory, failed=True, mappings=h.mappings, crm=h.crm)
    assert [o.from_step for o in outcomes] == ["map"]
    drain(worker, settled(h, opp))

    deal = h.deal(opp)
    assert deal.status == "done", deal.last_error
    assert deal.mapping_version == "v2"
    assert emu.count("customer") == 1
    assert emu.count("subscription") == 1
    # Replaying a finished deal again changes nothing.
    assert replay(h.session_factory, [opp], mappings=h.mappings)[0].requeued is False


def test_faults_on_a_batch_completes_without_duplicates(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    emu.faults = Faults(
        error_rate=0.2,
        rate_limit_per_second=25,
        latency_ms=5,
        drop_rate=0.05,
        lock_timeout=True,
        seed=7,
    )
    bucket = TokenBucket(20, burst=2)
    h.billing = StripeGateway(
        emu.api_key,
        api_base=emu.url,
        acquire=bucket.acquire,
        on_rate_limited=bucket.pause,
        retry=request_retrier(FAST_RETRY),
    )
    opps = [f"0060000000000{n:02d}AAA" for n in range(12)]
    for n, opp in enumerate(opps):
        h.add_opportunity(make_plan(opp, account_id=f"0010000000000{n % 4:02d}AAA"))
    _enqueue(h, *opps)
    drain(h.worker(), settled(h, *opps), timeout=60)

    statuses = h.statuses()
    assert set(statuses.values()) == {"done"}, {o: h.deal(o).last_error for o in opps}
    assert emu.count("customer") == 4
    assert emu.count("subscription") == 12
    assert emu.count("invoice") == 12
    subscribed = {s["metadata"]["sf_opportunity_id"] for s in emu.objects("subscription")}
    assert subscribed == set(opps)
    stats = emu.stats.snapshot()
    assert stats.server_errors > 0  # the faults did happen
    # the client-side token bucket keeps under Stripe's rate: no storm of 429s
    assert stats.rate_limited <= stats.total * 0.05, stats


def test_same_deal_enqueued_twice_and_run_by_two_workers_gives_one_subscription(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000005AAA"
    h.add_opportunity(make_plan(opp))
    h.settings = h.settings.model_copy(update={"worker_concurrency": 2})
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def replica(name: str) -> None:
        try:
            start.wait(timeout=10)
            _enqueue(h, opp)
            drain(h.worker(owner=name), settled(h, opp), timeout=30)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(f"replica-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert h.deal(opp).status == "done"
    assert emu.count("customer") == 1
    assert emu.count("subscription") == 1
    assert emu.count("invoice") == 1


def test_stripe_requests_per_deal(stripe_harness: Harness, provisioning_emulator: Any) -> None:
    """A paid send_invoice deal costs 3 requests for a new customer (create customer, create
    subscription, finalize the invoice) and 2 for an account already known; the catalog
    lookup is one request per process, cached afterwards."""
    h, emu = stripe_harness, provisioning_emulator
    first, second, third = "006000000000011AAA", "006000000000012AAA", "006000000000013AAA"
    h.add_opportunity(make_plan(first))
    h.add_opportunity(make_plan(second))
    h.add_opportunity(make_plan(third, account_id="001000000000099AAA"))
    worker = h.worker()

    def run(opp: str) -> dict[str, int]:
        emu.stats.reset()
        _enqueue(h, opp)
        drain(worker, settled(h, opp))
        assert h.deal(opp).status == "done"
        return dict(emu.stats.snapshot().by_route)

    assert run(first) == {
        "GET /v1/prices": 1,
        "POST /v1/customers": 1,
        "POST /v1/subscriptions": 1,
        "POST /v1/invoices/{id}/finalize": 1,
    }
    assert run(second) == {"POST /v1/subscriptions": 1, "POST /v1/invoices/{id}/finalize": 1}
    assert run(third) == {
        "POST /v1/customers": 1,
        "POST /v1/subscriptions": 1,
        "POST /v1/invoices/{id}/finalize": 1,
    }

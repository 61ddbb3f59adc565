"""Card deals (charge_automatically) against the Stripe emulator: the subscription stays
`incomplete` until its first invoice is paid and expires unpaid after 23 hours on the
emulator's clock. The mapping's `card_payments.entitlements` decides whether the grants take
effect at once or when the payment succeeds; webhooks, signed and delivered by the emulator
to the real HTTP service, move the deal on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.api import create_app
from sf_bridge.db.models import CANCELLED, EntitlementGrant
from sf_bridge.invoices.webhooks import process_event
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.store import FIRST_PAYMENT_MISSING
from tests.fixtures.api import API_KEY, WEBHOOK_SECRET, api_settings, serve_in_thread
from tests.fixtures.provisioning import Harness, drain, make_plan, settled

ACCOUNT = "001000000000001AAA"
DAY = 23 * 3600 + 60


def _provision(h: Harness, opp: str) -> None:
    h.add_opportunity(make_plan(opp, collection_method="charge_automatically"))
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [opp], source="test")
    drain(h.worker(), settled(h, opp))


@contextmanager
def _service(db_url: str, h: Harness, emu: Any) -> Iterator[httpx.Client]:
    """The HTTP service (webhooks and the entitlement API), the emulator's webhooks to it."""
    app = create_app(api_settings(db_url), h.session_factory, billing=h.billing)
    with serve_in_thread(app) as url:
        emu.add_webhook_endpoint(f"{url}/webhooks/stripe", WEBHOOK_SECRET)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10.0) as client:
            yield client


def _features(client: httpx.Client) -> dict[str, Any]:
    response = client.get(f"/v1/customers/{ACCOUNT}/entitlements")
    assert response.status_code == 200, response.text
    return dict(response.json()["entitlements"])


def _grants(session_factory: sessionmaker[Session]) -> list[tuple[str, bool, bool]]:
    with session_factory() as session:
        rows = session.execute(
            select(
                EntitlementGrant.feature, EntitlementGrant.active, EntitlementGrant.pending
            ).order_by(EntitlementGrant.feature)
        ).all()
        return [tuple(r) for r in rows]  # type: ignore[misc]


def _status_written(h: Harness, opp: str) -> Any:
    return h.crm.written.get(opp, {}).get("Provisioning_Status__c")


def test_on_first_payment_grants_nothing_until_paid_then_everything(
    db_url: str, stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000021AAA"
    _provision(h, opp)
    deal = h.deal(opp)
    assert deal.status == "done", deal.last_error
    assert emu.get(deal.stripe_subscription_id)["status"] == "incomplete"
    assert deal.payment_state == "awaiting_payment"
    assert _grants(h.session_factory) == [("seats", False, True), ("sso", False, True)]
    assert _status_written(h, opp) == "Provisioned, awaiting payment"
    with _service(db_url, h, emu) as client:
        features = _features(client)
        assert {f: (v["access"], v.get("pending")) for f, v in features.items()} == {
            "seats": (False, True),
            "sso": (False, True),
        }
        emu.pay_invoice(deal.stripe_invoice_id)
        assert emu.wait_for_webhooks(10)
        assert emu.get(deal.stripe_subscription_id)["status"] == "active"
        features = _features(client)
        assert features["sso"]["access"] is True
        assert features["seats"]["limit"] == 3
    deal = h.deal(opp)
    assert (deal.status, deal.payment_state, deal.invoice_status) == ("done", "paid", "paid")
    assert _grants(h.session_factory) == [("seats", True, False), ("sso", True, False)]
    h.worker().run_once()
    assert _status_written(h, opp) == "Provisioned"
    assert not h.deal(opp).writeback_pending
    # Paid after 23 hours is paid: nothing expires.
    emu.advance_clock(DAY)
    assert h.deal(opp).status == "done"


def test_on_first_payment_expired_unpaid_revokes_and_writes_back_the_reason(
    db_url: str, stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000022AAA"
    _provision(h, opp)
    deal = h.deal(opp)
    with _service(db_url, h, emu) as client:
        emu.advance_clock(DAY)
        assert emu.wait_for_webhooks(10)
        assert emu.get(deal.stripe_subscription_id)["status"] == "incomplete_expired"
        features = _features(client)
        assert {f: (v["access"], v.get("revoked")) for f, v in features.items()} == {
            "seats": (False, True),
            "sso": (False, True),
        }
    deal = h.deal(opp)
    assert (deal.status, deal.payment_state) == (CANCELLED, "expired")
    assert deal.last_error_code == FIRST_PAYMENT_MISSING
    assert "incomplete_expired" in (deal.last_error or "")
    assert _grants(h.session_factory) == [("seats", False, False), ("sso", False, False)]
    h.worker().run_once()
    written = h.crm.written[opp]
    assert written["Provisioning_Status__c"] == "Cancelled"
    assert "incomplete_expired" in written["Provisioning_Error__c"]


def test_at_once_grants_on_completion_and_revokes_on_expiry(
    db_url: str, stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.card_entitlements = "at_once"
    opp = "006000000000023AAA"
    _provision(h, opp)
    deal = h.deal(opp)
    assert (deal.status, deal.payment_state) == ("done", "awaiting_payment")
    assert _grants(h.session_factory) == [("seats", True, False), ("sso", True, False)]
    assert _status_written(h, opp) == "Provisioned, awaiting payment"
    with _service(db_url, h, emu) as client:
        assert _features(client)["sso"]["access"] is True
        emu.advance_clock(DAY)
        assert emu.wait_for_webhooks(10)
        assert _features(client)["sso"]["access"] is False
    deal = h.deal(opp)
    assert (deal.status, deal.payment_state) == (CANCELLED, "expired")
    assert _grants(h.session_factory) == [("seats", False, False), ("sso", False, False)]


def test_card_on_file_is_paid_at_creation_and_granted_at_once(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    first, second = "006000000000024AAA", "006000000000027AAA"
    _provision(h, first)
    # The customer now has a card: the next deal's first invoice is charged as it is created.
    emu.set_default_payment_method(h.deal(first).stripe_customer_id, "pm_card_visa")
    _provision(h, second)
    deal = h.deal(second)
    assert emu.get(deal.stripe_subscription_id)["status"] == "active"
    assert (deal.status, deal.payment_state, deal.invoice_status) == ("done", "paid", "paid")
    assert _status_written(h, second) == "Provisioned"
    with h.session_factory() as session:
        rows = session.execute(
            select(EntitlementGrant.active, EntitlementGrant.pending).where(
                EntitlementGrant.deal_id == deal.id
            )
        ).all()
    assert [tuple(r) for r in rows] == [(True, False), (True, False)]


def _events(emu: Any, subscription_id: str) -> list[dict[str, Any]]:
    found = []
    for event in emu.events():
        obj = event["data"]["object"]
        parent = (obj.get("parent") or {}).get("subscription_details") or {}
        if subscription_id in (obj.get("id"), parent.get("subscription")):
            found.append(event)
    return found


def test_duplicate_and_out_of_order_deliveries_act_on_the_current_state(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000025AAA"
    _provision(h, opp)
    deal = h.deal(opp)
    sub = deal.stripe_subscription_id
    emu.pay_invoice(deal.stripe_invoice_id)
    events = _events(emu, sub)
    kinds = [e["type"] for e in events]
    assert "invoice.paid" in kinds
    assert "customer.subscription.updated" in kinds
    # Newest first, each twice: the stale `customer.subscription.created` (incomplete) after
    # the payment changes nothing back.
    outcomes = [
        process_event(h.session_factory, e, h.billing).outcome for e in [*reversed(events), *events]
    ]
    assert outcomes.count("first_payment_recorded") == 1, outcomes
    assert outcomes[len(events) :] == ["duplicate"] * len(events)
    deal = h.deal(opp)
    assert (deal.status, deal.payment_state) == ("done", "paid")
    assert _grants(h.session_factory) == [("seats", True, False), ("sso", True, False)]
    with h.session_factory() as session:
        from sf_bridge.db.models import DealEvent

        kinds_recorded = session.scalars(
            select(DealEvent.kind).where(DealEvent.deal_id == deal.id)
        ).all()
    assert kinds_recorded.count("first_payment_received") == 1


def test_a_stale_activation_after_expiry_grants_nothing_back(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000026AAA"
    _provision(h, opp)
    deal = h.deal(opp)
    sub = deal.stripe_subscription_id
    emu.advance_clock(DAY)
    expired = [e for e in _events(emu, sub) if e["type"] == "customer.subscription.updated"]
    assert expired
    for event in expired:
        process_event(h.session_factory, event, h.billing)
    assert h.deal(opp).status == CANCELLED
    # A forged-late copy saying `active`, applied without asking Stripe (no billing port):
    # the cancelled deal is not paid and nothing is granted back.
    stale = {
        "id": "evt_stale_active",
        "type": "customer.subscription.updated",
        "created": expired[0]["created"] - 10,
        "data": {"object": {**expired[0]["data"]["object"], "status": "active"}},
    }
    assert process_event(h.session_factory, stale, None).outcome == "unchanged"
    deal = h.deal(opp)
    assert (deal.status, deal.payment_state) == (CANCELLED, "expired")
    assert _grants(h.session_factory) == [("seats", False, False), ("sso", False, False)]


def test_deals_list_and_show_tell_the_payment_state_and_what_waits_for_it(
    cli_stripe: Any,
) -> None:
    """The example mappings grant card deals at once: `deals show` names the payment state
    and when Stripe expires the subscription unpaid; once paid, the list says so."""
    from pathlib import Path

    from typer.testing import CliRunner

    from sf_bridge.cli import app
    from sf_bridge.config import get_settings
    from sf_bridge.db.engine import make_engine

    emu = cli_stripe
    example = Path(__file__).resolve().parents[3] / "examples/opportunities/team-self-serve.json"
    runner = CliRunner(env={"COLUMNS": "200"})
    provisioned = runner.invoke(app, ["provision", "--file", str(example)])
    assert provisioned.exit_code == 0, provisioned.output
    listed = runner.invoke(app, ["deals"]).output
    assert " unpaid " in listed, listed  # the Invoice column: the card payment's state
    shown = runner.invoke(app, ["deals", "show", "1"]).output
    assert "awaiting_payment: awaiting the first card payment" in shown, shown
    assert "  pending       unpaid by about" in shown
    assert "Stripe expires the subscription" in shown
    assert "pending the first payment" not in shown  # at_once: in effect already
    [invoice] = emu.objects("invoice")
    emu.pay_invoice(invoice["id"])
    engine = make_engine(get_settings().database_url)
    factory = sessionmaker(engine)
    for event in emu.events():
        process_event(factory, event, None)
    engine.dispose()
    assert " paid " in runner.invoke(app, ["deals"]).output
    shown = runner.invoke(app, ["deals", "show", "1"]).output
    assert "paid: first card payment received" in shown, shown
    assert "  pending " not in shown  # nothing waits any more


def test_an_idle_worker_writes_the_payment_back_without_waiting_for_its_safety_poll(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """Recording the first payment wakes the worker (here in the same process; on PostgreSQL
    across processes by NOTIFY): the opportunity is told at once."""
    import threading

    from tests.fixtures.waiting import wait_until

    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000028AAA"
    _provision(h, opp)
    worker = h.worker()
    worker.safety_poll = 600.0  # far beyond the wait below
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deal = h.deal(opp)
        emu.pay_invoice(deal.stripe_invoice_id)
        for event in emu.events():
            process_event(h.session_factory, event, h.billing)
        wait_until(lambda: _status_written(h, opp) == "Provisioned", 10, "the payment told")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()

"""Signed webhook delivery with retries, and what the passing of time does to invoices."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import stripe

from sf_bridge.sandbox.stripe_emulator import StripeEmulator
from tests.fixtures.stripe import SAMPLE_CATALOG, WEBHOOK_SECRET


class Receiver:
    """A webhook endpoint on loopback that verifies signatures as an application does and
    answers 500 to the first `fail_first` deliveries."""

    def __init__(self, secret: str, fail_first: int = 0) -> None:
        self.secret = secret
        self.fail_first = fail_first
        self.received: list[stripe.Event] = []
        self.rejected: list[str] = []
        self.calls = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.calls += 1
                    failing = receiver.calls <= receiver.fail_first
                try:
                    event = stripe.Webhook.construct_event(
                        body, self.headers["Stripe-Signature"], receiver.secret
                    )
                except (ValueError, stripe.SignatureVerificationError) as exc:
                    receiver.rejected.append(str(exc))
                    self.send_response(400)
                else:
                    if failing:
                        self.send_response(500)
                    else:
                        with receiver.lock:
                            receiver.received.append(event)
                        self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stripe/webhooks"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def types(self) -> list[str]:
        with self.lock:
            return [e.type for e in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(WEBHOOK_SECRET)
    yield r
    r.close()


@pytest.fixture
def fast_retry_emulator() -> Iterator[StripeEmulator]:
    emu = StripeEmulator(webhook_secret=WEBHOOK_SECRET, webhook_retry_delays=(0.05, 0.1, 0.2))
    with emu:
        yield emu


def _invoice_subscription(emu: StripeEmulator, client: stripe.StripeClient, days: int = 30) -> Any:
    prices = emu.seed_catalog(SAMPLE_CATALOG)
    customer = client.v1.customers.create(params={"name": "Acme"})
    return client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": prices["pro_monthly"]}],
            "collection_method": "send_invoice",
            "days_until_due": days,
        }
    )


def test_events_are_delivered_signed_in_order(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, receiver: Receiver
) -> None:
    stripe_emulator.add_webhook_endpoint(receiver.url, WEBHOOK_SECRET)
    sub = _invoice_subscription(stripe_emulator, stripe_client)
    stripe_client.v1.invoices.finalize_invoice(str(sub.latest_invoice))
    expected = [
        *["product.created", "price.created"] * 3,  # starter, pro, extra seats
        "price.created",  # pro yearly, on the pro product
        "customer.created",
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
    ]
    wait_for(lambda: len(receiver.received) == len(expected))
    assert receiver.types() == expected
    assert receiver.rejected == []
    finalized = receiver.received[-1]
    assert finalized.data.object.status == "open"
    assert finalized.data.object.hosted_invoice_url is not None


def test_a_wrong_secret_fails_verification(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, receiver: Receiver
) -> None:
    stripe_emulator.add_webhook_endpoint(receiver.url, "whsec_someone_else")
    stripe_client.v1.customers.create(params={"name": "Acme"})
    wait_for(lambda: len(receiver.rejected) == 1)
    assert receiver.received == []


def test_failed_deliveries_are_retried_until_accepted(
    fast_retry_emulator: StripeEmulator,
) -> None:
    emu = fast_retry_emulator
    failing = Receiver(WEBHOOK_SECRET, fail_first=2)
    try:
        emu.add_webhook_endpoint(failing.url, enabled_events=["customer.created"])
        client = stripe.StripeClient(emu.api_key, base_addresses={"api": emu.url})
        client.v1.customers.create(params={"name": "Acme"})
        wait_for(lambda: len(emu.webhook_attempts()) == 3)
        assert failing.types() == ["customer.created"]
        attempts = emu.webhook_attempts()
        assert [a.status for a in attempts] == [500, 500, 200]
        assert [a.attempt for a in attempts] == [1, 2, 3]
        wait_for(lambda: emu.events("customer.created")[0]["pending_webhooks"] == 0)
    finally:
        failing.close()


def test_delivery_to_an_unreachable_endpoint_gives_up(fast_retry_emulator: StripeEmulator) -> None:
    emu = fast_retry_emulator
    emu.add_webhook_endpoint("http://127.0.0.1:9/nowhere")  # discard port: refused
    client = stripe.StripeClient(emu.api_key, base_addresses={"api": emu.url})
    client.v1.customers.create(params={"name": "Acme"})
    wait_for(lambda: len(emu.webhook_attempts()) == 4)  # first try + three retries
    assert all(a.status is None and a.error for a in emu.webhook_attempts())
    assert emu.events("customer.created")[0]["pending_webhooks"] == 1


def test_draft_invoice_finalizes_itself_after_an_hour(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    sub = _invoice_subscription(stripe_emulator, stripe_client)
    invoice_id = str(sub.latest_invoice)
    stripe_emulator.advance_clock(1800)
    assert stripe_client.v1.invoices.retrieve(invoice_id).status == "draft"
    stripe_emulator.advance_clock(1800)
    finalized = stripe_client.v1.invoices.retrieve(invoice_id)
    assert finalized.status == "open"
    assert finalized.hosted_invoice_url is not None


def test_overdue_invoice_emits_event_and_makes_subscription_past_due(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    sub = _invoice_subscription(stripe_emulator, stripe_client, days=14)
    invoice = stripe_client.v1.invoices.finalize_invoice(str(sub.latest_invoice))
    stripe_emulator.advance_clock(13 * 86_400)
    assert stripe_emulator.events("invoice.overdue") == []
    stripe_emulator.advance_clock(2 * 86_400)
    (overdue,) = stripe_emulator.events("invoice.overdue")
    assert overdue["data"]["object"]["id"] == invoice.id
    assert stripe_client.v1.subscriptions.retrieve(sub.id).status == "past_due"
    stripe_emulator.advance_clock(86_400)
    assert len(stripe_emulator.events("invoice.overdue")) == 1  # once per invoice

    paid = stripe_client.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True})
    assert paid.status == "paid"
    assert stripe_client.v1.subscriptions.retrieve(sub.id).status == "active"
    updated = stripe_emulator.events("customer.subscription.updated")
    assert [e["data"]["previous_attributes"]["status"] for e in updated] == [
        "active",
        "past_due",
    ]


def test_helpers_pay_and_trigger_overdue(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    sub = _invoice_subscription(stripe_emulator, stripe_client)
    invoice = stripe_client.v1.invoices.finalize_invoice(str(sub.latest_invoice))
    stripe_emulator.trigger_invoice_overdue(invoice.id)
    assert len(stripe_emulator.events("invoice.overdue")) == 1
    paid = stripe_emulator.pay_invoice(invoice.id)
    assert paid["status"] == "paid"
    assert stripe_emulator.events()[-1]["type"] in ("invoice.paid", "customer.subscription.updated")


def test_given_clock_drives_timestamps() -> None:
    now = [1_800_000_000.0]
    with StripeEmulator(now=lambda: now[0]) as emu:
        client = stripe.StripeClient(emu.api_key, base_addresses={"api": emu.url})
        assert client.v1.customers.create(params={"name": "A"}).created == 1_800_000_000
        now[0] += 60
        emu.advance_clock(40)
        assert client.v1.customers.create(params={"name": "B"}).created == 1_800_000_100


def test_subscription_renews_with_a_new_invoice_each_period(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    sub = _invoice_subscription(stripe_emulator, stripe_client, days=30)
    first_end = sub["items"].data[0].current_period_end
    stripe_emulator.advance_clock(first_end - stripe_emulator.now() + 2 * 3600)
    renewed = stripe_client.v1.subscriptions.retrieve(sub.id)
    assert renewed["items"].data[0].current_period_start == first_end
    assert renewed.latest_invoice != sub.latest_invoice
    invoice = stripe_client.v1.invoices.retrieve(str(renewed.latest_invoice))
    assert invoice.billing_reason == "subscription_cycle"
    assert invoice.status == "open"  # finalized an hour into the period
    assert invoice.status_transitions.finalized_at == first_end + 3600
    assert invoice.lines.data[0].period.start == first_end
    invoices = stripe_client.v1.invoices.list(params={"subscription": sub.id})
    assert len(invoices.data) == 2


def test_cancel_at_period_end_cancels_when_the_period_ends(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    sub = _invoice_subscription(stripe_emulator, stripe_client)
    stripe_client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    end = sub["items"].data[0].current_period_end
    stripe_emulator.advance_clock(end - stripe_emulator.now() + 1)
    ended = stripe_client.v1.subscriptions.retrieve(sub.id)
    assert ended.status == "canceled"
    assert ended.ended_at == end
    assert stripe_emulator.count("invoice") == 1
    assert stripe_emulator.events()[-1]["type"] == "customer.subscription.deleted"


def test_card_subscription_renewal_charges_or_goes_past_due(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    prices = stripe_emulator.seed_catalog(SAMPLE_CATALOG)
    customer = stripe_client.v1.customers.create(
        params={"name": "Card", "invoice_settings": {"default_payment_method": "pm_card_visa"}}
    )
    sub = stripe_client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": prices["pro_monthly"]}]}
    )
    assert sub.status == "active"
    end = sub["items"].data[0].current_period_end
    stripe_emulator.advance_clock(end - stripe_emulator.now() + 60)
    renewal = stripe_client.v1.subscriptions.retrieve(sub.id, params={"expand": ["latest_invoice"]})
    assert renewal.latest_invoice.status == "paid"
    assert renewal.status == "active"

    stripe_emulator.set_default_payment_method(customer.id, "pm_card_chargeCustomerFail")
    stripe_emulator.advance_clock(40 * 86_400)
    failed = stripe_client.v1.subscriptions.retrieve(sub.id, params={"expand": ["latest_invoice"]})
    assert failed.latest_invoice.status == "open"
    assert failed.status == "past_due"
    assert stripe_emulator.events("invoice.payment_failed")


def test_incomplete_subscription_expires_after_23_hours(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    prices = stripe_emulator.seed_catalog(SAMPLE_CATALOG)
    customer = stripe_client.v1.customers.create(params={"name": "No card"})
    sub = stripe_client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": prices["pro_monthly"]}]}
    )
    assert sub.status == "incomplete"
    stripe_emulator.advance_clock(23 * 3600 + 1)
    expired = stripe_client.v1.subscriptions.retrieve(sub.id, params={"expand": ["latest_invoice"]})
    assert expired.status == "incomplete_expired"
    assert expired.latest_invoice.status == "void"


def test_search_lags_behind_writes_when_asked(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    stripe_emulator.faults.search_lag_seconds = 0.3
    created = stripe_client.v1.customers.create(
        params={"name": "Acme", "metadata": {"sf_account_id": "001LAG"}}
    )
    query = {"query": "metadata['sf_account_id']:'001LAG'"}
    assert stripe_client.v1.customers.search(params=query).data == []
    assert stripe_client.v1.customers.retrieve(created.id).id == created.id  # reads are current
    wait_for(lambda: len(stripe_client.v1.customers.search(params=query).data) == 1, timeout=5)


def test_webhook_endpoints_through_the_api(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient, receiver: Receiver
) -> None:
    created = stripe_client.v1.webhook_endpoints.create(
        params={"url": receiver.url, "enabled_events": ["customer.created"]}
    )
    assert created.secret.startswith("whsec_")
    receiver.secret = created.secret
    stripe_client.v1.customers.create(params={"name": "Acme"})
    wait_for(lambda: receiver.types() == ["customer.created"])

    listed = stripe_client.v1.webhook_endpoints.list()
    assert [e.id for e in listed.data] == [created.id]
    assert "secret" not in listed.data[0]  # shown once, at creation
    stripe_client.v1.webhook_endpoints.update(created.id, params={"disabled": True})
    stripe_client.v1.customers.create(params={"name": "Quiet"})
    assert stripe_emulator.events("customer.created")[-1]["pending_webhooks"] == 0
    deleted = stripe_client.v1.webhook_endpoints.delete(created.id)
    assert deleted.deleted is True
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.webhook_endpoints.retrieve(created.id)


def test_registered_endpoints_have_stripes_shape(stripe_emulator: StripeEmulator) -> None:
    fixture = json.loads(
        (Path(__file__).parents[2] / "data" / "stripe" / "fixtures.json").read_text()
    )["resources"]["webhook_endpoint"]
    stripe_emulator.add_webhook_endpoint("http://127.0.0.1:9/x", "whsec_x")
    (endpoint,) = stripe_emulator.objects("webhook_endpoint")
    assert set(endpoint) == set(fixture)

"""With Stripe configured, webhooks act on the object's current state read from Stripe, and a
failure to read it answers 500 so that Stripe delivers the event again."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.api import create_app
from sf_bridge.billing.memory import InMemoryBilling
from sf_bridge.billing.port import BillingInvoice, BillingSubscription
from sf_bridge.db.models import CANCELLED, Deal, WebhookEvent
from sf_bridge.errors import TransientError
from tests.fixtures.api import (
    STANDARD_ENTITLEMENTS,
    Clock,
    api_settings,
    seed_deal,
    serve_in_thread,
    sign,
    stripe_event,
)

Post = Callable[[bytes], httpx.Response]


@pytest.fixture
def billing() -> InMemoryBilling:
    billing = InMemoryBilling()
    billing.subscriptions["sub_test_1"] = BillingSubscription(
        "sub_test_1", "cus_1", "active", "in_test_1", "send_invoice"
    )
    billing.invoices["in_test_1"] = BillingInvoice(
        "in_test_1", "open", None, None, None, subscription="sub_test_1"
    )
    return billing


@pytest.fixture
def post(
    db_url: str,
    session_factory: sessionmaker[Session],
    billing: InMemoryBilling,
    api_clock: Clock,
) -> Iterator[Post]:
    app = create_app(api_settings(db_url), session_factory, billing=billing, clock=api_clock)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=10) as client:

        def send(payload: bytes) -> httpx.Response:
            return client.post(
                "/webhooks/stripe", content=payload, headers={"Stripe-Signature": sign(payload)}
            )

        yield send


def _deal(session_factory: sessionmaker[Session]) -> Deal:
    with session_factory() as session:
        deal = session.scalars(select(Deal)).one()
        deal.events  # noqa: B018
        return deal


def test_a_stale_event_is_applied_from_the_current_state(
    session_factory: sessionmaker[Session], billing: InMemoryBilling, post: Post
) -> None:
    seed_deal(session_factory, STANDARD_ENTITLEMENTS)
    billing.invoices["in_test_1"] = replace(billing.invoices["in_test_1"], status="paid")
    # The payment_failed event was sent before the invoice got paid; it arrives after.
    late = stripe_event("evt_late", "invoice.payment_failed", {"id": "in_test_1", "status": "open"})
    response = post(late)
    assert response.status_code == 200
    assert response.json()["outcome"] == "invoice_paid"
    deal = _deal(session_factory)
    assert deal.invoice_status == "paid"
    assert [e.kind for e in deal.events] == ["invoice_paid"]

    # An "active" update of a subscription Stripe now shows cancelled revokes.
    billing.subscriptions["sub_test_1"] = replace(
        billing.subscriptions["sub_test_1"], status="canceled"
    )
    update = stripe_event(
        "evt_upd", "customer.subscription.updated", {"id": "sub_test_1", "status": "active"}
    )
    assert post(update).json()["outcome"] == "subscription_cancelled"
    assert _deal(session_factory).status == CANCELLED


def test_a_failure_answers_500_and_the_redelivery_is_applied_once(
    session_factory: sessionmaker[Session], billing: InMemoryBilling, post: Post
) -> None:
    seed_deal(session_factory, STANDARD_ENTITLEMENTS)
    billing.invoices["in_test_1"] = replace(billing.invoices["in_test_1"], status="paid")
    billing.fail_next("get_invoice", TransientError("Stripe answered 503."))
    payload = stripe_event("evt_paid", "invoice.paid", {"id": "in_test_1", "status": "paid"})
    failed = post(payload)
    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "internal_error"
    with session_factory() as session:
        assert session.scalars(select(WebhookEvent)).all() == []  # not marked as processed
    assert _deal(session_factory).invoice_status == "open"

    redelivered = post(payload)
    assert redelivered.json() == {
        "received": True,
        "event_id": "evt_paid",
        "duplicate": False,
        "outcome": "invoice_paid",
    }
    assert post(payload).json()["duplicate"] is True
    assert _deal(session_factory).invoice_status == "paid"

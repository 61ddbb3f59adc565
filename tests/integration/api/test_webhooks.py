"""POST /webhooks/stripe: signatures, replays, arrival order, and what each event changes."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import stripe
from sqlalchemy import select
from structlog.testing import capture_logs

from sf_bridge.db.models import CANCELLED, Deal, DealEvent, EntitlementGrant, WebhookEvent
from sf_bridge.metrics import WEBHOOK_EVENTS
from tests.fixtures.api import (
    ACCOUNT_ID,
    STANDARD_ENTITLEMENTS,
    ApiServer,
    PostEvent,
    seed_deal,
    sign,
    stripe_event,
)

INVOICE = {
    "id": "in_test_1",
    "object": "invoice",
    "parent": {"subscription_details": {"subscription": "sub_test_1"}},
}
SUBSCRIPTION = {"id": "sub_test_1", "object": "subscription"}


def _deal(api_server: ApiServer) -> Deal:
    with api_server.session_factory() as session:
        deal = session.scalars(select(Deal)).one()
        deal.events  # noqa: B018  (load the history before the session closes)
        return deal


def _active_grants(api_server: ApiServer) -> int:
    with api_server.session_factory() as session:
        return len(
            session.scalars(select(EntitlementGrant).where(EntitlementGrant.active.is_(True))).all()
        )


def test_bad_signatures_and_old_timestamps_are_refused(
    api_server: ApiServer, post_event: PostEvent
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    payload = stripe_event("evt_1", "customer.subscription.deleted", SUBSCRIPTION)

    wrong_secret = post_event(payload, signature=sign(payload, secret="whsec_notthesecret0123"))
    assert wrong_secret.status_code == 400
    assert wrong_secret.json()["error"]["code"] == "bad_signature"
    assert "STRIPE_WEBHOOK_SECRET" in wrong_secret.json()["error"]["hint"]
    assert "whsec_" not in wrong_secret.text

    stale = post_event(payload, signature=sign(payload, timestamp=int(time.time()) - 3600))
    assert stale.status_code == 400
    assert "tolerance" in stale.json()["error"]["message"].lower()

    tampered = post_event(payload.replace(b"sub_test_1", b"sub_test_9"), signature=sign(payload))
    assert tampered.status_code == 400

    missing = post_event(payload, signature="")
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "missing_signature"

    # Nothing was applied or remembered.
    assert _active_grants(api_server) == 3
    with api_server.session_factory() as session:
        assert session.scalars(select(WebhookEvent)).all() == []


def test_timestamps_outside_the_tolerance_are_refused_in_both_directions(
    api_server: ApiServer, post_event: PostEvent
) -> None:
    """Signed with the right secret, but an hour ahead of (or behind) this server's clock: a
    replay, or a clock that is off. The stripe SDK alone refuses only the past."""
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    payload = stripe_event("evt_when", "customer.subscription.deleted", SUBSCRIPTION)
    now = int(time.time())

    future = post_event(payload, signature=sign(payload, timestamp=now + 3600))
    assert future.status_code == 400
    error = future.json()["error"]
    assert error["code"] == "timestamp_outside_tolerance"
    assert "ahead of this server's clock" in error["message"]
    assert "tolerance of 300 s" in error["message"]
    assert "NTP" in error["hint"]

    past = post_event(payload, signature=sign(payload, timestamp=now - 3600))
    assert past.status_code == 400
    assert past.json()["error"]["code"] == "timestamp_outside_tolerance"
    assert "behind this server's clock" in past.json()["error"]["message"]

    # Nothing was applied or remembered; a delivery signed within the tolerance is accepted.
    assert _active_grants(api_server) == 3
    with api_server.session_factory() as session:
        assert session.scalars(select(WebhookEvent)).all() == []
    slightly_ahead = post_event(payload, signature=sign(payload, timestamp=now + 60))
    assert slightly_ahead.status_code == 200
    assert slightly_ahead.json()["outcome"] == "subscription_cancelled"


def test_a_replayed_event_is_applied_once(api_server: ApiServer, post_event: PostEvent) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    payload = stripe_event("evt_paid", "invoice.paid", {**INVOICE, "status": "paid"})
    first = post_event(payload)
    assert first.status_code == 200
    assert first.json() == {
        "received": True,
        "event_id": "evt_paid",
        "duplicate": False,
        "outcome": "invoice_paid",
    }
    again = post_event(payload)  # Stripe redelivers, with a fresh signature
    assert again.status_code == 200
    assert again.json()["duplicate"] is True

    deal = _deal(api_server)
    assert deal.invoice_status == "paid"
    assert [e.kind for e in deal.events] == ["invoice_paid"]


def test_the_same_event_delivered_concurrently_is_applied_once(
    api_server: ApiServer, post_event: PostEvent
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    payload = stripe_event("evt_race", "invoice.paid", {**INVOICE, "status": "paid"})
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post_event(payload), range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    assert sorted(a.json()["duplicate"] for a in answers) == [False, True, True, True]
    assert [e.kind for e in _deal(api_server).events] == ["invoice_paid"]


def test_subscription_events_in_any_order_end_with_grants_revoked(
    api_server: ApiServer, post_event: PostEvent, http: httpx.Client
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    created = int(time.time()) - 100
    updated_active = stripe_event(
        "evt_upd_active",
        "customer.subscription.updated",
        {**SUBSCRIPTION, "status": "active"},
        created=created,
    )
    deleted = stripe_event(
        "evt_deleted",
        "customer.subscription.deleted",
        {**SUBSCRIPTION, "status": "canceled", "cancellation_details": {"reason": "payment"}},
        created=created + 50,
    )
    # The deletion arrives first, then the older "active" update.
    assert post_event(deleted).json()["outcome"] == "subscription_cancelled"
    assert post_event(updated_active).json()["outcome"] == "unchanged"

    assert _active_grants(api_server) == 0
    deal = _deal(api_server)
    assert deal.status == CANCELLED
    assert [e.kind for e in deal.events] == ["subscription_cancelled"]
    sso = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/sso").json()
    assert (sso["access"], sso["revoked"]) == (False, True)
    assert "payment" in sso["revoked_reason"]


def test_updated_with_status_canceled_revokes_and_later_deleted_changes_nothing(
    api_server: ApiServer, post_event: PostEvent
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    updated = stripe_event(
        "evt_upd", "customer.subscription.updated", {**SUBSCRIPTION, "status": "canceled"}
    )
    deleted = stripe_event("evt_del", "customer.subscription.deleted", SUBSCRIPTION)
    assert post_event(updated).json()["outcome"] == "subscription_cancelled"
    assert post_event(deleted).json()["outcome"] == "unchanged"
    assert _active_grants(api_server) == 0
    assert len(_deal(api_server).events) == 1


def test_invoice_events_out_of_order_never_reopen_a_paid_invoice(
    api_server: ApiServer, post_event: PostEvent
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    paid = stripe_event("evt_a", "invoice.paid", {**INVOICE, "status": "paid"})
    failed = stripe_event("evt_b", "invoice.payment_failed", {**INVOICE, "status": "open"})
    overdue = stripe_event("evt_c", "invoice.overdue", {**INVOICE, "status": "open"})
    assert post_event(paid).json()["outcome"] == "invoice_paid"
    assert post_event(failed).json()["outcome"] == "unchanged"
    assert post_event(overdue).json()["outcome"] == "unchanged"
    deal = _deal(api_server)
    assert deal.invoice_status == "paid"
    assert [e.kind for e in deal.events] == ["invoice_paid"]
    assert _active_grants(api_server) == 3  # payment events never touch entitlements


def test_payment_failed_and_overdue_are_recorded_on_an_open_invoice(
    api_server: ApiServer, post_event: PostEvent
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    failed = stripe_event(
        "evt_f", "invoice.payment_failed", {**INVOICE, "status": "open", "attempt_count": 1}
    )
    overdue = stripe_event("evt_o", "invoice.overdue", {**INVOICE, "status": "open"})
    assert post_event(failed).json()["outcome"] == "payment_failed_recorded"
    assert post_event(overdue).json()["outcome"] == "overdue_recorded"
    # A renewal (not the deal's first invoice) is matched by the subscription it names under
    # parent.subscription_details, where the pinned API version has it.
    renewal = {
        "id": "in_renewal",
        "object": "invoice",
        "status": "paid",
        "parent": {"subscription_details": {"subscription": "sub_test_1"}},
    }
    assert post_event(stripe_event("evt_r", "invoice.paid", renewal)).json()["outcome"] == (
        "invoice_paid"
    )
    unknown = stripe_event("evt_u", "invoice.paid", {"id": "in_other", "status": "paid"})
    assert post_event(unknown).json()["outcome"] == "unknown_invoice"
    # The pinned API version has no top-level invoice.subscription: it is not read.
    old_shape = {"id": "in_old_shape", "status": "paid", "subscription": "sub_test_1"}
    assert post_event(stripe_event("evt_old", "invoice.paid", old_shape)).json()["outcome"] == (
        "unknown_invoice"
    )
    ignored = stripe_event("evt_i", "charge.succeeded", {"id": "ch_1"})
    assert post_event(ignored).json()["outcome"] == "ignored"

    deal = _deal(api_server)
    assert deal.invoice_status == "open"
    assert [e.kind for e in deal.events] == [
        "invoice_payment_failed",
        "invoice_overdue",
        "invoice_paid",
    ]
    with api_server.session_factory() as session:
        kinds = session.scalars(select(DealEvent.detail)).all()
    assert {"invoice_id": "in_renewal", "status": "paid"} in kinds


def test_not_an_event_is_refused(api_server: ApiServer, post_event: PostEvent) -> None:
    assert post_event(b"not json").status_code == 400
    assert post_event(b'{"hello": "world"}').json()["error"]["code"] == "bad_payload"


def test_an_event_in_another_api_version_is_answered_counted_and_not_applied(
    api_server: ApiServer, post_event: PostEvent
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    old_invoice = {"id": "in_test_1", "object": "invoice", "subscription": "sub_test_1"}
    payload = stripe_event(
        "evt_old", "invoice.paid", {**old_invoice, "status": "paid"}, api_version="2024-06-20"
    )
    counted = WEBHOOK_EVENTS.labels("invoice.paid", "wrong_api_version")
    before = counted._value.get()
    with capture_logs() as logs:
        response = post_event(payload)  # signed as Stripe signs it
    assert response.status_code == 200, "Stripe would retry forever, in the same version"
    assert response.json()["outcome"] == "wrong_api_version"
    assert counted._value.get() == before + 1
    [warning] = [e for e in logs if e["event"] == "stripe_event_wrong_api_version"]
    assert (warning["event_api_version"], warning["pinned_api_version"]) == (
        "2024-06-20",
        stripe.api_version,
    )
    assert "docs/setup-stripe.md" in warning["message"]
    assert _deal(api_server).invoice_status != "paid"
    with api_server.session_factory() as session:
        assert session.scalars(select(WebhookEvent)).all() == []

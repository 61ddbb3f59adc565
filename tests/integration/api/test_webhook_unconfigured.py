"""Without STRIPE_WEBHOOK_SECRET, webhooks are refused and the answer names the setting."""

from __future__ import annotations

import httpx

from sf_bridge.api import create_app
from sf_bridge.db.engine import make_engine, make_session_factory
from tests.fixtures.api import api_settings, serve_in_thread, sign, stripe_event


def test_webhooks_are_refused_without_a_secret(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    app = create_app(
        api_settings(sqlite_url, STRIPE_WEBHOOK_SECRET=""), make_session_factory(engine)
    )
    payload = stripe_event("evt_1", "invoice.paid", {"id": "in_1"})
    with serve_in_thread(app) as url:
        response = httpx.post(
            f"{url}/webhooks/stripe", content=payload, headers={"Stripe-Signature": sign(payload)}
        )
    engine.dispose()
    assert response.status_code == 503
    assert "STRIPE_WEBHOOK_SECRET" in response.json()["error"]["message"]

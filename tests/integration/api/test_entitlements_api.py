"""The entitlement API over real HTTP (uvicorn on a free port), on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
from sqlalchemy import Engine, text

from sf_bridge.entitlements.ledger import revoke_subscription_grants
from sf_bridge.plan import EntitlementValue
from tests.fixtures.api import (
    ACCOUNT_ID,
    OTHER_API_KEY,
    STANDARD_ENTITLEMENTS,
    ApiServer,
    seed_deal,
)


def test_all_entitlements_combine_deals_and_name_them(
    api_server: ApiServer, http: httpx.Client
) -> None:
    customer_id, _ = seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    seed_deal(
        api_server.session_factory,
        (EntitlementValue("seats", "seats", 5, source="add-on seats x 5"),),
        opportunity_id="006000000000002AAA",
        subscription_id="sub_test_2",
        invoice_id="in_test_2",
    )
    response = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements")
    assert response.status_code == 200
    body = response.json()
    assert body["customer"]["id"] == customer_id
    features = body["entitlements"]
    assert features["sso"]["access"] is True
    assert features["seats"]["limit"] == 30
    assert [g["opportunity_id"] for g in features["seats"]["granted_by"]] == [
        "006000000000001AAA",
        "006000000000002AAA",
    ]
    api_calls = features["api_calls"]
    assert (api_calls["limit"], api_calls["used"], api_calls["remaining"]) == (1000, 0, 1000)
    assert api_calls["period"]["key"] == "2026-11"

    # Our customer id and the 15-character Account id name the same customer.
    by_id = http.get(f"/v1/customers/{customer_id}/entitlements")
    by_short_id = http.get(f"/v1/customers/{ACCOUNT_ID[:15]}/entitlements")
    assert by_id.json() == body == by_short_id.json()


def test_an_account_with_two_stripe_customers_gets_its_entitlements_combined(
    api_server: ApiServer, http: httpx.Client
) -> None:
    """A USD deal and a EUR deal of one account are billed to two Stripe customers (a Stripe
    customer bills in one currency); the API still answers for the account, across both."""
    usd_customer, _ = seed_deal(
        api_server.session_factory,
        STANDARD_ENTITLEMENTS,
        customer_key=f"{ACCOUNT_ID}/USD",
        stripe_customer_id="cus_usd",
    )
    eur_customer, _ = seed_deal(
        api_server.session_factory,
        (
            EntitlementValue("seats", "seats", 10, source="plan team"),
            EntitlementValue("api_calls", "limit", 500, unit="calls/month", source="plan team"),
        ),
        opportunity_id="006000000000002AAA",
        subscription_id="sub_test_2",
        invoice_id="in_test_2",
        customer_key=f"{ACCOUNT_ID}/EUR",
        stripe_customer_id="cus_eur",
    )
    assert usd_customer != eur_customer
    body = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements").json()
    assert body["customer"]["sf_account_id"] == ACCOUNT_ID
    assert body["customer"]["stripe_customer_ids"] == ["cus_usd", "cus_eur"]
    features = body["entitlements"]
    assert features["seats"]["limit"] == 35
    assert features["api_calls"]["limit"] == 1500
    assert [g["stripe_subscription_id"] for g in features["seats"]["granted_by"]] == [
        "sub_test_1",
        "sub_test_2",
    ]
    # either customer's id names the account; usage counts once for the account
    assert http.get(f"/v1/customers/{eur_customer}/entitlements").json() == body
    for ref, key in ((ACCOUNT_ID, "k1"), (str(eur_customer), "k2")):
        report = {"customer": ref, "feature": "api_calls", "quantity": 600, "idempotency_key": key}
        assert http.post("/v1/usage", json=report).status_code == 201
    one = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/api_calls").json()
    assert (one["limit"], one["used"], one["remaining"]) == (1500, 1200, 300)


def test_accounts_sharing_a_stripe_customer_keep_their_own_entitlements(
    api_server: ApiServer, http: httpx.Client
) -> None:
    other = "001000000000009AAA"
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS, customer_key="GROUP-7/USD")
    seed_deal(
        api_server.session_factory,
        (EntitlementValue("seats", "seats", 4, source="plan team"),),
        account_id=other,
        opportunity_id="006000000000002AAA",
        subscription_id="sub_test_2",
        customer_key="GROUP-7/USD",
    )
    mine = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements").json()
    theirs = http.get(f"/v1/customers/{other}/entitlements").json()
    assert mine["customer"]["id"] == theirs["customer"]["id"]  # one customer
    assert theirs["customer"]["sf_account_id"] == other
    assert mine["entitlements"]["seats"]["limit"] == 25
    assert theirs["entitlements"]["seats"]["limit"] == 4
    assert "sso" not in theirs["entitlements"]
    report = {"customer": other, "feature": "api_calls", "quantity": 1, "idempotency_key": "k"}
    assert http.post("/v1/usage", json=report).json()["error"]["code"] == "unknown_feature"


def test_one_feature_and_etag_revalidation(api_server: ApiServer, http: httpx.Client) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    first = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/api_calls")
    assert first.status_code == 200
    assert first.json()["remaining"] == 1000
    etag = first.headers["etag"]

    unchanged = http.get(
        f"/v1/customers/{ACCOUNT_ID}/entitlements/api_calls", headers={"If-None-Match": etag}
    )
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == etag

    report = http.post(
        "/v1/usage",
        json={
            "customer": ACCOUNT_ID,
            "feature": "api_calls",
            "quantity": 7,
            "idempotency_key": "k1",
        },
    )
    assert report.status_code == 201
    changed = http.get(
        f"/v1/customers/{ACCOUNT_ID}/entitlements/api_calls", headers={"If-None-Match": etag}
    )
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert changed.json()["used"] == 7


def test_unknown_customer_and_feature_are_404_with_a_clear_body(
    api_server: ApiServer, http: httpx.Client
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    unknown_customer = http.get("/v1/customers/001999999999999ZZZ/entitlements/sso")
    assert unknown_customer.status_code == 404
    error = unknown_customer.json()["error"]
    assert error["code"] == "unknown_customer"
    assert "001999999999999ZZZ" in error["message"]
    assert "access" not in unknown_customer.json()

    unknown_feature = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/teleportation")
    assert unknown_feature.status_code == 404
    error = unknown_feature.json()["error"]
    assert error["code"] == "unknown_feature"
    assert "api_calls, seats, sso" in error["hint"]

    no_route = http.get("/v1/nothing-here")
    assert no_route.status_code == 404
    assert no_route.json()["error"]["code"] == "not_found"


def test_revoked_feature_answers_access_false_with_the_reason(
    api_server: ApiServer, http: httpx.Client
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    with api_server.session_factory() as session, session.begin():
        revoke_subscription_grants(session, "sub_test_1", "invoice unpaid 14 days past due")
    response = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/sso")
    assert response.status_code == 200
    body = response.json()
    assert body["access"] is False
    assert body["revoked"] is True
    assert body["revoked_reason"] == "invoice unpaid 14 days past due"


def test_api_keys_are_required_and_checked(api_server: ApiServer) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    path = f"/v1/customers/{ACCOUNT_ID}/entitlements"
    with api_server.client(api_key=None) as anonymous:
        missing = anonymous.get(path)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "missing_api_key"
        assert "Authorization: Bearer" in missing.json()["error"]["hint"]
        via_header = anonymous.get(path, headers={"X-API-Key": OTHER_API_KEY})
        assert via_header.status_code == 200
    with api_server.client(api_key="sfb-test-key-wrong") as wrong:
        refused = wrong.get(path)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert "sfb-test-key" not in refused.text
        assert wrong.post("/v1/usage", json={}).status_code == 401


def test_openapi_document_lists_the_routes(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert {
        "/v1/customers/{ref}/entitlements",
        "/v1/customers/{ref}/entitlements/{feature}",
        "/v1/usage",
        "/webhooks/stripe",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(document["paths"])


def test_reads_do_not_wait_for_a_writer(
    api_server: ApiServer, http: httpx.Client, engine: Engine
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    with engine.begin() as conn:  # a worker's write transaction holds the write lock
        conn.execute(text("UPDATE customers SET name = 'Acme Renamed'"))
        # A read waiting for the writer would wait the 30 s busy timeout: far past 10 s.
        response = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/sso", timeout=10)
        assert response.status_code == 200
        assert response.json()["customer"]["name"] == "Acme Corp"  # the committed state


def test_grants_of_a_deal_whose_customer_link_is_missing_still_count(
    api_server: ApiServer, http: httpx.Client, engine: Engine
) -> None:
    """The grants name their customer themselves: a deal whose customer link was cleared
    (a replayed deal back at its customer step, say) keeps granting what it granted."""
    customer_id, _ = seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    _, unlinked = seed_deal(
        api_server.session_factory,
        (EntitlementValue("premium_support", "flag", True, source="custom plan"),),
        opportunity_id="006000000000002AAA",
        subscription_id=None,
        invoice_id=None,
    )
    with engine.begin() as conn:
        conn.execute(text("UPDATE deals SET customer_id = NULL WHERE id = :id"), {"id": unlinked})
    body = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements").json()
    assert body["customer"]["id"] == customer_id
    assert body["entitlements"]["premium_support"]["access"] is True
    assert http.get(f"/v1/customers/{customer_id}/entitlements").json() == body
    one = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/premium_support")
    assert one.status_code == 200

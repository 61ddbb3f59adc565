"""The entitlement API and the Python client answer for an account whichever form of its id
product code holds: 15 characters (from a URL or a report), 18, or 18 with its case folded."""

from __future__ import annotations

import httpx

from sf_bridge.client import EntitlementClient
from sf_bridge.crm.soql import to_18
from tests.fixtures.api import API_KEY, STANDARD_ENTITLEMENTS, ApiServer, seed_deal

ACCOUNT_15 = "001Hs00002AcmeC"
ACCOUNT_18 = to_18(ACCOUNT_15)  # 001Hs00002AcmeCIAR


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_form_of_the_account_id_names_the_customer(
    api_server: ApiServer, http: httpx.Client
) -> None:
    customer_id, _ = seed_deal(
        api_server.session_factory, STANDARD_ENTITLEMENTS, account_id=ACCOUNT_18
    )
    answers = {
        ref: http.get(f"/v1/customers/{ref}/entitlements/sso")
        for ref in (ACCOUNT_18, ACCOUNT_15, ACCOUNT_18.lower(), ACCOUNT_18.upper())
    }
    for ref, answer in answers.items():
        assert answer.status_code == 200, (ref, answer.text)
        assert answer.json()["customer"]["id"] == customer_id
        assert answer.json()["customer"]["sf_account_id"] == ACCOUNT_18
        assert answer.json()["access"] is True

    usage = http.post(
        "/v1/usage",
        json={
            "customer": ACCOUNT_18.lower(),
            "feature": "api_calls",
            "quantity": 3,
            "idempotency_key": "k-1",
        },
    )
    assert usage.status_code == 201, usage.text
    listing = http.get(f"/v1/customers/{ACCOUNT_15}/entitlements")
    assert listing.json()["entitlements"]["api_calls"]["used"] == 3


def test_a_reference_that_is_no_id_says_what_an_id_looks_like(
    api_server: ApiServer, http: httpx.Client
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS, account_id=ACCOUNT_18)
    answer = http.get("/v1/customers/001Hs00002Acme/entitlements")
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == "unknown_customer"
    assert "'001Hs00002Acme'" in error["message"]
    assert "15 or 18 letters and digits" in error["hint"]


def test_the_client_keeps_one_cache_entry_per_account(api_server: ApiServer) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS, account_id=ACCOUNT_18)
    client = EntitlementClient(api_server.url, API_KEY, refresh_interval=30, clock=FakeMonotonic())
    try:
        first = client.check(ACCOUNT_18, "api_calls")
        assert (first.access, first.source) == (True, "service")
        short = client.check(ACCOUNT_15, "api_calls")
        folded = client.check(ACCOUNT_18.lower(), "sso")
        assert (short.source, short.access, folded.source, folded.access) == (
            "cache",
            True,
            "cache",
            True,
        )
        assert client.stats.fetches == 1

        receipt = client.report_usage(ACCOUNT_15, "api_calls", 5, idempotency_key="u-1")
        assert (receipt.buffered, receipt.used) == (False, 5)
        # The answer to the usage report updated the one cached entry of the account.
        assert client.check(ACCOUNT_18, "api_calls").used == 5
        assert client.get_entitlements(ACCOUNT_15).features["api_calls"]["used"] == 5
        assert client.stats.fetches == 1
    finally:
        client.close()

"""Logins the sandbox org accepts, through the same requests the client libraries send."""

from __future__ import annotations

import base64

import pytest
import requests
from simple_salesforce import Salesforce, SalesforceAuthenticationFailed
from simple_salesforce.login import SalesforceLogin

from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from tests.integration.salesforce_org.clients import oauth_login, sandbox_session


def token_url(org: SalesforceSandbox) -> str:
    return f"{org.url}/services/oauth2/token"


def test_password_grant_returns_a_salesforce_token_response(
    salesforce_org: SalesforceSandbox, http: requests.Session
) -> None:
    response = http.post(
        token_url(salesforce_org),
        data={
            "grant_type": "password",
            "client_id": salesforce_org.client_id,
            "client_secret": salesforce_org.client_secret,
            "username": salesforce_org.username,
            "password": salesforce_org.password + salesforce_org.security_token,
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "access_token",
        "instance_url",
        "id",
        "token_type",
        "issued_at",
        "signature",
    }
    assert body["instance_url"] == salesforce_org.url
    assert body["token_type"] == "Bearer"
    assert body["access_token"].startswith(salesforce_org.org_id[:15] + "!")
    assert body["id"].endswith(f"/id/{salesforce_org.org_id}/{salesforce_org.user_id}")
    assert salesforce_org.calls["auth"] == 1


def test_client_credentials_grant_accepts_basic_auth_and_form_fields(
    salesforce_org: SalesforceSandbox, http: requests.Session
) -> None:
    basic = base64.b64encode(
        f"{salesforce_org.client_id}:{salesforce_org.client_secret}".encode()
    ).decode()
    with_header = http.post(
        token_url(salesforce_org),
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    with_form = http.post(
        token_url(salesforce_org),
        data={
            "grant_type": "client_credentials",
            "client_id": salesforce_org.client_id,
            "client_secret": salesforce_org.client_secret,
        },
    )
    assert with_header.status_code == with_form.status_code == 200
    assert with_header.json()["access_token"] != with_form.json()["access_token"]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"password": "wrong"}, "invalid_grant"),
        ({"username": "someone@else.example"}, "invalid_grant"),
        ({"client_id": "unknown"}, "invalid_client_id"),
        ({"client_secret": "wrong"}, "invalid_client"),
        ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
    ],
)
def test_bad_credentials_get_oauth_errors(
    salesforce_org: SalesforceSandbox, http: requests.Session, changes: dict[str, str], error: str
) -> None:
    data = {
        "grant_type": "password",
        "client_id": salesforce_org.client_id,
        "client_secret": salesforce_org.client_secret,
        "username": salesforce_org.username,
        "password": salesforce_org.password + salesforce_org.security_token,
    } | changes
    response = http.post(token_url(salesforce_org), data=data)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert "error_description" in response.json()


def test_simple_salesforce_soap_login_and_refresh_after_expiry(
    salesforce_org: SalesforceSandbox,
) -> None:
    session = sandbox_session(salesforce_org, route_login_hosts=True)
    sf = Salesforce(
        username=salesforce_org.username,
        password=salesforce_org.password,
        security_token=salesforce_org.security_token,
        session=session,
        version=salesforce_org.api_version,
    )
    assert sf.sf_instance == salesforce_org.url.removeprefix("http://")
    assert sf.query("SELECT COUNT() FROM Opportunity")["totalSize"] == 0

    salesforce_org.expire_sessions()
    # simple-salesforce logs in again on INVALID_SESSION_ID when it holds the credentials.
    assert sf.query("SELECT COUNT() FROM Opportunity")["done"] is True
    assert salesforce_org.calls["auth"] == 2


def test_soap_login_refuses_a_wrong_password(salesforce_org: SalesforceSandbox) -> None:
    session = sandbox_session(salesforce_org, route_login_hosts=True)
    with pytest.raises(SalesforceAuthenticationFailed) as failure:
        SalesforceLogin(
            username=salesforce_org.username,
            password="wrong",
            security_token=salesforce_org.security_token,
            session=session,
            sf_version=salesforce_org.api_version,
        )
    assert failure.value.code == "INVALID_LOGIN"


def test_sessions_end_after_two_idle_hours_on_the_org_clock(
    salesforce_org: SalesforceSandbox, http: requests.Session
) -> None:
    token = oauth_login(salesforce_org, http)["access_token"]
    url = f"{salesforce_org.url}/services/data/v62.0/limits"
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(3):  # in use every 90 minutes: stays alive
        salesforce_org.advance_clock(90 * 60)
        assert http.get(url, headers=headers).status_code == 200
    salesforce_org.advance_clock(2 * 3600 + 1)
    expired = http.get(url, headers=headers)
    assert expired.status_code == 401
    assert expired.json()[0]["errorCode"] == "INVALID_SESSION_ID"

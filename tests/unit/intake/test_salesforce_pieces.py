"""The pure parts of the Salesforce client: SOQL text, loopback transport, budget, OAuth form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests
from pydantic import SecretStr

from sf_bridge.crm import soql
from sf_bridge.crm.auth import SalesforceCredentials, SalesforceLoginFailed, parse_token_response
from sf_bridge.crm.limits import ApiBudget, parse_limit_info
from sf_bridge.crm.transport import LoopbackHttpAdapter, check_url_scheme, is_loopback_host
from sf_bridge.errors import ConfigurationError, CrmRejected, RateLimitedError

OPP = "0068d00000AbCdEAAV"


def test_ids_are_validated_before_soql():
    assert soql.is_salesforce_id(OPP)
    assert soql.is_salesforce_id(OPP[:15])
    for bad in ["", "006", OPP + "X", "0068d00000AbCd'", "0068d00000AbCdE' OR Id != '", None, 7]:
        assert not soql.is_salesforce_id(bad)
    valid, rejected = soql.split_ids([OPP, "x", OPP, None])
    assert valid == [OPP]
    assert rejected == ["x", None]
    with pytest.raises(ValueError, match="not a Salesforce id"):
        soql.id_list(["' OR 1=1"])


def test_batch_query_has_lines_subquery_and_required_fields():
    query = soql.opportunities_by_id(
        [OPP], ["Name", "Account.Name", "Seats__c", "id"], ["Quantity", "Id"]
    )
    assert query == (
        "SELECT Id, StageName, IsWon, LastModifiedDate, AccountId, Name, Account.Name, Seats__c, "
        "(SELECT Id, Quantity FROM OpportunityLineItems) "
        f"FROM Opportunity WHERE Id IN ('{OPP}')"
    )
    with pytest.raises(CrmRejected, match="API name"):
        soql.opportunities_by_id([OPP], ["Name FROM User --"], [])
    with pytest.raises(ValueError, match="between 1 and 200"):
        soql.opportunities_by_id([OPP] * 201, [], [])


def test_chunks_of_two_hundred():
    ids = [f"006{i:015d}" for i in range(450)]
    assert [len(c) for c in soql.chunks(ids)] == [200, 200, 50]


def test_won_since_query_and_datetimes():
    since = datetime(2026, 11, 25, 17, 0, 1, 250000, tzinfo=timezone(timedelta(hours=1)))
    assert soql.won_since(since, 10) == (
        "SELECT Id, LastModifiedDate FROM Opportunity WHERE IsWon = true AND "
        "LastModifiedDate > 2026-11-25T16:00:01.250Z ORDER BY LastModifiedDate ASC LIMIT 10"
    )
    assert "LastModifiedDate >" not in soql.won_since(None, 5)
    parsed = soql.parse_salesforce_datetime("2026-11-25T16:00:01.250+0000")
    assert parsed == datetime(2026, 11, 25, 16, 0, 1, 250000, tzinfo=UTC)
    assert soql.parse_salesforce_datetime("2026-11-25T16:00:01Z").tzinfo is not None


def test_eighteen_character_form():
    assert soql.to_18("001A0000006Vm9r") == "001A0000006Vm9rIAC"
    assert soql.to_18("001A0000006Vm9rIAC") == "001A0000006Vm9rIAC"
    assert soql.to_18("001A0000006Vm9riac") == "001A0000006Vm9rIAC"


def test_plain_http_only_for_loopback():
    for host in ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST"]:
        assert is_loopback_host(host), host
    for host in ["10.0.0.1", "example.com", "127.0.0.1.example.com", "", None]:
        assert not is_loopback_host(host), host
    check_url_scheme("https://acme.my.salesforce.com", "x")
    check_url_scheme("http://127.0.0.1:8080", "x")
    with pytest.raises(ConfigurationError, match="loopback"):
        check_url_scheme("http://acme.my.salesforce.com", "SF_LOGIN_URL")


def test_adapter_downgrades_loopback_https_only(monkeypatch: pytest.MonkeyPatch):
    sent: list[str] = []

    def fake_send(self, request, *args, **kwargs):
        sent.append(request.url)
        return requests.Response()

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", fake_send)
    adapter = LoopbackHttpAdapter()
    for url in [
        "https://127.0.0.1:5000/services/data/v62.0/query?q=x",
        "https://localhost/x",
        "https://127.0.0.1.example.com/x",
        "https://acme.my.salesforce.com/x",
    ]:
        adapter.send(requests.Request("GET", url).prepare())
    assert sent == [
        "http://127.0.0.1:5000/services/data/v62.0/query?q=x",
        "http://localhost/x",
        "https://127.0.0.1.example.com/x",
        "https://acme.my.salesforce.com/x",
    ]


def test_budget_pauses_calls_when_low_and_after_limit_exceeded():
    now = [0.0]
    budget = ApiBudget(
        reserve_fraction=0.1, probe_interval=60, exceeded_backoff=300, clock=lambda: now[0]
    )
    budget.record_header("api-usage=10/100")
    budget.before_call()
    budget.record_header("api-usage=95/100")
    with pytest.raises(RateLimitedError) as info:
        budget.before_call()
    assert info.value.retry_after == pytest.approx(60)
    now[0] = 61
    budget.before_call()  # a probe may go out
    error = budget.record_limit_exceeded()
    assert error.retry_after == 300
    with pytest.raises(RateLimitedError):
        budget.before_call()
    assert parse_limit_info("api-usage=25/5000; per-app-api-usage=17/250(appName=x)") == (25, 5000)
    assert parse_limit_info("per-app-api-usage=17/250(appName=x)") is None
    assert parse_limit_info(None) is None


def creds(**kw) -> SalesforceCredentials:
    base = {
        "login_url": "http://127.0.0.1:9",
        "client_id": "cid",
        "client_secret": SecretStr("csecret"),
    }
    base.update(kw)
    return SalesforceCredentials(**base)  # type: ignore[arg-type]


def test_token_forms_for_both_flows_and_no_secret_in_repr():
    password = creds(username="u@x", password=SecretStr("pw"), security_token=SecretStr("tok"))
    assert password.flow == "password"
    assert password.token_form() == {
        "client_id": "cid",
        "client_secret": "csecret",
        "grant_type": "password",
        "username": "u@x",
        "password": "pwtok",
    }
    assert creds().flow == "client_credentials"
    assert creds().token_form()["grant_type"] == "client_credentials"
    assert "pw" not in repr(password)
    assert "csecret" not in repr(password)
    assert password.token_url == "http://127.0.0.1:9/services/oauth2/token"


def test_missing_credentials_name_the_variables():
    with pytest.raises(ConfigurationError, match="SF_PASSWORD"):
        creds(username="u@x").validate()
    with pytest.raises(ConfigurationError, match="SF_CLIENT_SECRET"):
        creds(client_secret=None).validate()
    with pytest.raises(ConfigurationError, match="https"):
        creds(login_url="http://login.example.com").validate()


def test_token_response_parsing():
    token = parse_token_response(
        200, {"access_token": "00Dxx!secret", "instance_url": "http://127.0.0.1:5/"}, "password"
    )
    assert token.instance_url == "http://127.0.0.1:5"
    assert "secret" not in repr(token)
    with pytest.raises(SalesforceLoginFailed, match="invalid_grant"):
        parse_token_response(
            400,
            {"error": "invalid_grant", "error_description": "authentication failure"},
            "password",
        )
    with pytest.raises(ConfigurationError):
        parse_token_response(
            200, {"access_token": "t", "instance_url": "http://evil.example"}, "password"
        )

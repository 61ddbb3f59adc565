"""The REST API of the sandbox org through the real simple-salesforce client."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from simple_salesforce import (
    Salesforce,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from tests.integration.salesforce_org.conftest import Deal, make_deal

BATCH_QUERY = (
    "SELECT Id, Name, AccountId, Account.Name, Account.BillingCountry, Account.Owner.Email, "
    "Contact.Email, CurrencyIsoCode, CloseDate, StageName, IsWon, Amount, LastModifiedDate, "
    "(SELECT Id, Quantity, UnitPrice, ListPrice, TotalPrice, Discount, "
    "PricebookEntry.Product2.ProductCode FROM OpportunityLineItems ORDER BY SortOrder), "
    "(SELECT Contact.Email, Role, IsPrimary FROM OpportunityContactRoles) "
    "FROM Opportunity WHERE Id IN ({ids})"
)


def quoted(*ids: str) -> str:
    return ", ".join(f"'{i}'" for i in ids)


def test_batch_query_returns_nested_parents_and_line_item_subquery(
    salesforce_org: SalesforceSandbox, sf: Salesforce, deal: Deal
) -> None:
    result = sf.query(BATCH_QUERY.format(ids=quoted(deal.opportunity_id)))

    assert result["totalSize"] == 1
    assert result["done"] is True
    record = result["records"][0]
    assert record["attributes"] == {
        "type": "Opportunity",
        "url": f"/services/data/v62.0/sobjects/Opportunity/{deal.opportunity_id}",
    }
    assert record["Id"] == deal.opportunity_id
    assert record["Account"]["Name"] == "Acme Inc"
    assert record["Account"]["attributes"]["type"] == "Account"
    assert record["Account"]["Owner"]["Email"] == "integration@sandbox.example"
    assert record["Contact"]["Email"] == "buyer@acme.example"
    assert record["StageName"] == "Negotiation/Review"
    assert record["IsWon"] is False
    assert record["Amount"] == 910.0  # 10 x 90 + 1 x 20 at 50 % off
    assert record["LastModifiedDate"].endswith(".000+0000")
    lines = record["OpportunityLineItems"]
    assert (lines["totalSize"], lines["done"]) == (2, True)
    first, second = lines["records"]
    assert first["PricebookEntry"]["Product2"]["ProductCode"] == "PLAN-PRO"
    assert (first["Quantity"], first["UnitPrice"], first["ListPrice"]) == (10.0, 90.0, 100.0)
    assert first["TotalPrice"] == 900.0
    assert first["Discount"] is None
    assert (second["Discount"], second["TotalPrice"]) == (50, 10.0)
    roles = record["OpportunityContactRoles"]["records"]
    assert roles[0]["Contact"]["Email"] == "buyer@acme.example"
    assert roles[0]["IsPrimary"] is True


def test_absent_parent_and_empty_subquery_are_null(
    salesforce_org: SalesforceSandbox, sf: Salesforce
) -> None:
    salesforce_org.create_product("PLAN-PRO", "Pro plan")
    account = salesforce_org.create_account("No lines")
    opportunity = salesforce_org.create_opportunity(account, "Empty", [])

    record = sf.query(BATCH_QUERY.format(ids=quoted(opportunity)))["records"][0]

    assert record["Contact"] is None
    assert record["OpportunityLineItems"] is None
    assert record["Amount"] == 0.0


def test_sweep_query_filters_won_deals_by_last_modified_date(
    salesforce_org: SalesforceSandbox, sf: Salesforce
) -> None:
    old, recent, open_deal = (make_deal(salesforce_org, n) for n in ("Old", "Recent", "Open"))
    salesforce_org.close_won(old.opportunity_id)
    salesforce_org.advance_clock(3600)
    checkpoint = salesforce_org.now() - timedelta(seconds=1)
    salesforce_org.close_won(recent.opportunity_id)
    salesforce_org.update_opportunity(open_deal.opportunity_id, NextStep="call")

    soql = (
        "SELECT Id, LastModifiedDate FROM Opportunity WHERE IsWon = true AND "
        f"LastModifiedDate > {checkpoint.strftime('%Y-%m-%dT%H:%M:%SZ')} "
        "ORDER BY LastModifiedDate ASC LIMIT 2000"
    )
    assert [r["Id"] for r in sf.query(soql)["records"]] == [recent.opportunity_id]
    every_won = sf.query("SELECT Id FROM Opportunity WHERE IsWon = true ORDER BY Name DESC")
    assert [r["Id"] for r in every_won["records"]] == [recent.opportunity_id, old.opportunity_id]
    limited = sf.query("SELECT Id FROM Opportunity ORDER BY CreatedDate ASC, Name ASC LIMIT 2")
    assert limited["totalSize"] == 2


def test_fifteen_character_ids_match_their_eighteen_character_form(
    sf: Salesforce, deal: Deal
) -> None:
    result = sf.query(f"SELECT Id FROM Opportunity WHERE Id = '{deal.opportunity_id[:15]}'")
    assert [r["Id"] for r in result["records"]] == [deal.opportunity_id]


@pytest.mark.parametrize(
    ("soql", "error_code", "fragment"),
    [
        ("SELECT Idd FROM Opportunity", "INVALID_FIELD", "No such column 'Idd' on entity"),
        ("SELECT Acount.Name FROM Opportunity", "INVALID_FIELD", "relationship 'Acount'"),
        ("SELECT Id FORM Opportunity", "MALFORMED_QUERY", "unexpected token: 'FORM'"),
        ("SELECT Id FROM Opportunity WHERE", "MALFORMED_QUERY", "unexpected end of query"),
        ("SELECT Id FROM Opportunityy", "INVALID_TYPE", "sObject type 'Opportunityy'"),
        (
            "SELECT Id, (SELECT Id FROM LineItems) FROM Opportunity",
            "INVALID_TYPE",
            "relationship 'LineItems'",
        ),
        (
            "SELECT Id FROM Opportunity WHERE Id IN ('nope')",
            "INVALID_QUERY_FILTER_OPERATOR",
            "invalid ID field: nope",
        ),
        (
            "SELECT Id FROM Opportunity WHERE IsWon = 'true'",
            "INVALID_QUERY_FILTER_OPERATOR",
            "must be of type boolean and should not be enclosed in quotes",
        ),
        (
            "SELECT Id FROM Opportunity WHERE LastModifiedDate > '2026-11-25T10:00:00Z'",
            "INVALID_QUERY_FILTER_OPERATOR",
            "must be of type dateTime",
        ),
    ],
)
def test_bad_queries_get_salesforce_errors(
    sf: Salesforce, soql: str, error_code: str, fragment: str
) -> None:
    with pytest.raises(SalesforceMalformedRequest) as failure:
        sf.query(soql)
    assert failure.value.status == 400
    [error] = failure.value.content
    assert error["errorCode"] == error_code
    assert fragment in error["message"]
    assert "ERROR at Row:1:Column:" in error["message"]


def test_query_all_follows_next_records_url(
    salesforce_org: SalesforceSandbox, sf: Salesforce
) -> None:
    salesforce_org.query_batch_size = 3
    ids = {make_deal(salesforce_org, f"Co{i}").opportunity_id for i in range(7)}
    salesforce_org.reset_counters()

    first = sf.query("SELECT Id FROM Opportunity")
    assert (first["totalSize"], first["done"], len(first["records"])) == (7, False, 3)
    assert first["nextRecordsUrl"].startswith("/services/data/v62.0/query/01g")
    assert first["nextRecordsUrl"].endswith("-3")

    everything = sf.query_all("SELECT Id FROM Opportunity")
    assert {r["Id"] for r in everything["records"]} == ids
    assert salesforce_org.calls["query"] == 2
    assert salesforce_org.calls["query_more"] == 2
    assert salesforce_org.rest_calls() == 4

    with pytest.raises(SalesforceMalformedRequest) as failure:
        sf.query_more("01gXXXXXXXXXXXXXXX-3")
    assert failure.value.content[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_sobject_update_stores_custom_fields_and_refuses_bad_ones(
    salesforce_org: SalesforceSandbox, sf: Salesforce, deal: Deal
) -> None:
    status = sf.Opportunity.update(
        deal.opportunity_id, {"SF_Bridge_Status__c": "done", "Stripe_Customer_Id__c": "cus_1"}
    )
    assert status == 204
    stored = salesforce_org.get_opportunity(deal.opportunity_id)
    assert stored["SF_Bridge_Status__c"] == "done"
    assert stored["Stripe_Customer_Id__c"] == "cus_1"
    # Written custom fields can be queried afterwards.
    record = sf.query(
        f"SELECT SF_Bridge_Status__c FROM Opportunity WHERE Id = '{deal.opportunity_id}'"
    )
    assert record["records"][0]["SF_Bridge_Status__c"] == "done"

    with pytest.raises(SalesforceMalformedRequest) as unknown:
        sf.Opportunity.update(deal.opportunity_id, {"NoSuchField": "x"})
    assert unknown.value.content[0]["errorCode"] == "INVALID_FIELD"
    with pytest.raises(SalesforceMalformedRequest) as read_only:
        sf.Opportunity.update(deal.opportunity_id, {"IsWon": True})
    assert read_only.value.content[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    with pytest.raises(SalesforceResourceNotFound):
        sf.Opportunity.update("006000000000000AAA", {"SF_Bridge_Status__c": "x"})


def test_composite_update_reports_each_record(
    salesforce_org: SalesforceSandbox, sf: Salesforce
) -> None:
    good, failing = (make_deal(salesforce_org, n).opportunity_id for n in ("Good", "Locked"))
    salesforce_org.fail_updates(failing, "UNABLE_TO_LOCK_ROW", times=1)
    payload = {
        "allOrNone": False,
        "records": [
            {"attributes": {"type": "Opportunity"}, "id": good, "SF_Bridge_Status__c": "done"},
            {"attributes": {"type": "Opportunity"}, "id": failing, "SF_Bridge_Status__c": "done"},
            {"attributes": {"type": "Opportunity"}, "id": good, "Bogus": 1},
        ],
    }

    results = sf.restful("composite/sobjects", method="PATCH", json=payload)

    assert results[0] == {"id": good, "success": True, "errors": []}
    assert results[1]["success"] is False
    assert results[1]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"
    assert results[2]["errors"][0]["statusCode"] == "INVALID_FIELD"
    assert salesforce_org.get_opportunity(good)["SF_Bridge_Status__c"] == "done"
    assert salesforce_org.get_opportunity(failing)["SF_Bridge_Status__c"] is None
    # The fault was for one attempt: a retry succeeds.
    retry = sf.restful(
        "composite/sobjects", method="PATCH", json={"records": payload["records"][1:2]}
    )
    assert retry == [{"id": failing, "success": True, "errors": []}]


def test_composite_all_or_none_rolls_back_and_limit_is_200(
    salesforce_org: SalesforceSandbox, sf: Salesforce, deal: Deal
) -> None:
    records = [
        {"attributes": {"type": "Opportunity"}, "id": deal.opportunity_id, "Note__c": "x"},
        {"attributes": {"type": "Opportunity"}, "id": "006000000000000AAA", "Note__c": "x"},
    ]
    results = sf.restful(
        "composite/sobjects", method="PATCH", json={"allOrNone": True, "records": records}
    )
    assert [r["errors"][0]["statusCode"] for r in results] == [
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "INVALID_CROSS_REFERENCE_KEY",
    ]
    assert salesforce_org.get_opportunity(deal.opportunity_id).get("Note__c") is None

    with pytest.raises(SalesforceMalformedRequest) as too_many:
        sf.restful("composite/sobjects", method="PATCH", json={"records": records[:1] * 201})
    assert too_many.value.content[0]["errorCode"] == "EXCEEDED_ID_LIMIT"


def test_expired_session_answers_invalid_session_id(
    salesforce_org: SalesforceSandbox, sf: Salesforce
) -> None:
    salesforce_org.expire_sessions()
    with pytest.raises(SalesforceExpiredSession) as failure:
        sf.query("SELECT Id FROM Opportunity")
    assert failure.value.status == 401
    assert failure.value.content == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]
    assert salesforce_org.rest_calls() == 0


def test_limit_info_header_and_request_limit_exceeded(
    salesforce_org: SalesforceSandbox, sf: Salesforce, http: requests.Session
) -> None:
    salesforce_org.api_limit = (14_998, 15_000)
    sf.query("SELECT Id FROM Opportunity")
    assert sf.api_usage["api-usage"].used == 14_999
    assert sf.api_usage["api-usage"].total == 15_000
    sf.query("SELECT Id FROM Opportunity")

    with pytest.raises(SalesforceRefusedRequest) as failure:
        sf.query("SELECT Id FROM Opportunity")
    assert failure.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert failure.value.status == 403

    salesforce_org.api_limit = (0, 15_000)
    salesforce_org.request_limit_exceeded = True
    response = http.get(
        f"{salesforce_org.url}/services/data/v62.0/query",
        params={"q": "SELECT Id FROM Opportunity"},
        headers={"Authorization": f"Bearer {sf.session_id}"},
    )
    assert response.status_code == 403
    assert response.headers["Sforce-Limit-Info"] == "api-usage=0/15000"


def test_switchable_request_faults_answer_like_salesforce(
    salesforce_org: SalesforceSandbox, sf: Salesforce, deal: Deal
) -> None:
    salesforce_org.fail_requests("query", times=1)
    with pytest.raises(SalesforceGeneralError) as unavailable:
        sf.query("SELECT Id FROM Opportunity")
    assert unavailable.value.status == 503
    assert unavailable.value.content[0]["errorCode"] == "SERVER_UNAVAILABLE"
    assert sf.query("SELECT Id FROM Opportunity")["totalSize"] == 1  # only once

    salesforce_org.fail_requests("sobject_update", 400, "UNABLE_TO_LOCK_ROW", "locked", times=2)
    for _ in range(2):
        with pytest.raises(SalesforceMalformedRequest):
            sf.Opportunity.update(deal.opportunity_id, {"Note__c": "x"})
    assert sf.Opportunity.update(deal.opportunity_id, {"Note__c": "x"}) == 204


def test_an_internal_failure_answers_unknown_exception_and_the_org_keeps_serving(
    salesforce_org: SalesforceSandbox, sf: Salesforce, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(soql: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(salesforce_org.queries, "run", broken)
    with pytest.raises(SalesforceGeneralError) as failure:
        sf.query("SELECT Id FROM Opportunity")
    assert failure.value.status == 500
    assert failure.value.content[0]["errorCode"] == "UNKNOWN_EXCEPTION"
    monkeypatch.undo()
    assert sf.query("SELECT Id FROM Opportunity")["done"] is True

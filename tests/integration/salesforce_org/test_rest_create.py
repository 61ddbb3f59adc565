"""Setting up deals from outside the process, as a user of `sf-bridge sandbox` does: REST
creates, a won stage set through the API, platform event publishing and describe."""

from __future__ import annotations

import pytest
from simple_salesforce import Salesforce, SalesforceMalformedRequest

from sf_bridge.sandbox.salesforce_org import CDC_CHANNEL, SalesforceSandbox


def test_a_deal_built_through_rest_and_won_through_rest_emits_its_events(
    salesforce_org: SalesforceSandbox, sf: Salesforce
) -> None:
    salesforce_org.create_product("PLAN-PRO", "Pro plan", unit_price=100)
    product_id = sf.query("SELECT Id FROM Product2 WHERE ProductCode = 'PLAN-PRO'")["records"][0][
        "Id"
    ]
    account = sf.Account.create({"Name": "Acme", "BillingCountry": "DE"})
    assert account["success"] is True
    contact = sf.Contact.create(
        {"AccountId": account["id"], "LastName": "Buyer", "Email": "b@acme.example"}
    )
    opportunity = sf.Opportunity.create(
        {
            "AccountId": account["id"],
            "ContactId": contact["id"],
            "Name": "Acme deal",
            "StageName": "Proposal/Price Quote",
            "CloseDate": "2026-12-01",
            "CurrencyIsoCode": "EUR",
        }
    )
    line = sf.OpportunityLineItem.create(
        {
            "OpportunityId": opportunity["id"],
            "Product2Id": product_id,
            "Quantity": 3,
            "UnitPrice": 80,
        }
    )
    sf.Opportunity.update(opportunity["id"], {"StageName": "Closed Won"})

    record = sf.query(
        "SELECT Amount, IsWon, Contact.Name, (SELECT ProductCode, ListPrice, TotalPrice, "
        "CurrencyIsoCode FROM OpportunityLineItems) FROM Opportunity "
        f"WHERE Id = '{opportunity['id']}'"
    )["records"][0]
    assert record["Amount"] == 240.0
    assert record["IsWon"] is True
    assert record["Contact"]["Name"] == "Buyer"
    [line_record] = record["OpportunityLineItems"]["records"]
    assert line_record["ProductCode"] == "PLAN-PRO"
    assert line_record["ListPrice"] == 100.0
    assert line_record["CurrencyIsoCode"] == "EUR"
    assert line["id"].startswith("00k")

    headers = [
        e.message["data"]["payload"]["ChangeEventHeader"]
        for e in salesforce_org.events.retained(CDC_CHANNEL)
    ]
    assert [h["changeType"] for h in headers] == ["CREATE", "UPDATE", "UPDATE"]
    assert "Amount" in headers[1]["changedFields"]  # the line's roll-up
    assert "StageName" in headers[2]["changedFields"]
    assert {h["changeOrigin"] for h in headers} == {"com/salesforce/api/rest/62.0"}


@pytest.mark.parametrize(
    ("sobject", "values", "error_code"),
    [
        ("Opportunity", {"Name": "No stage"}, "REQUIRED_FIELD_MISSING"),
        (
            "Opportunity",
            {"Name": "x", "StageName": "Won!", "CloseDate": "2026-12-01"},
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        ),
        ("Account", {"Name": "x", "Nope": 1}, "INVALID_FIELD"),
        (
            "Account",
            {"Name": "x", "CreatedDate": "2026-01-01T00:00:00Z"},
            "INVALID_FIELD_FOR_INSERT_UPDATE",
        ),
        (
            "OpportunityLineItem",
            {"OpportunityId": "006000000000000AAA", "Quantity": 1, "UnitPrice": 1},
            "INVALID_CROSS_REFERENCE_KEY",
        ),
    ],
)
def test_creates_are_checked_like_salesforce(
    sf: Salesforce, sobject: str, values: dict[str, object], error_code: str
) -> None:
    with pytest.raises(SalesforceMalformedRequest) as failure:
        getattr(sf, sobject).create(values)
    assert failure.value.content[0]["errorCode"] == error_code


def test_platform_events_can_be_published_through_rest(
    salesforce_org: SalesforceSandbox, sf: Salesforce
) -> None:
    channel = salesforce_org.define_platform_event("Deal_Won__e")
    result = sf.Deal_Won__e.create({"Opportunity_Id__c": "0068d0000000001AAA"})
    assert result["success"] is True
    [event] = salesforce_org.events.retained(channel)
    assert event.message["data"]["payload"]["Opportunity_Id__c"] == "0068d0000000001AAA"
    assert "CreatedDate" in event.message["data"]["payload"]


def test_describe_lists_fields_with_their_properties(
    salesforce_org: SalesforceSandbox, sf: Salesforce
) -> None:
    salesforce_org.define_field("Opportunity", "SF_Bridge_Status__c")
    described = sf.Opportunity.describe()
    fields = {f["name"]: f for f in described["fields"]}
    assert fields["SF_Bridge_Status__c"]["custom"] is True
    assert fields["IsWon"]["updateable"] is False
    assert fields["AccountId"]["referenceTo"] == ["Account"]
    assert fields["AccountId"]["relationshipName"] == "Account"
    assert {
        "relationshipName": "OpportunityLineItems",
        "childSObject": "OpportunityLineItem",
        "field": "OpportunityId",
    } in described["childRelationships"]
    assert "Opportunity" in {s["name"] for s in sf.describe()["sobjects"]}

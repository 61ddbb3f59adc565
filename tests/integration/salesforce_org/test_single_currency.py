"""A sandbox org without multi-currency (most real orgs): `CurrencyIsoCode` exists on no object,
a query naming it fails as Salesforce's does, and the Organization record names the org's one
currency. Through the real simple-salesforce client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from simple_salesforce import Salesforce, SalesforceMalformedRequest

from sf_bridge.sandbox.salesforce_org import CDC_CHANNEL, SalesforceSandbox
from tests.integration.salesforce_org.clients import oauth_login, sandbox_session


@pytest.fixture
def single_org() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(
        port=0, long_poll_seconds=1.0, multi_currency=False, corporate_currency="EUR"
    ) as org:
        org.create_product("PLAN-PRO", "Pro plan", unit_price=100)
        yield org


@pytest.fixture
def single_sf(single_org: SalesforceSandbox) -> Iterator[Salesforce]:
    http = sandbox_session(single_org)
    token = oauth_login(single_org, http)
    yield Salesforce(
        instance_url=token["instance_url"],
        session_id=token["access_token"],
        session=http,
        version=single_org.api_version,
    )
    http.close()


def test_a_query_naming_currency_iso_code_fails_as_salesforce_does(
    single_org: SalesforceSandbox, single_sf: Salesforce
) -> None:
    account = single_org.create_account("Acme")
    single_org.create_opportunity(account, "Acme deal", [{"product_code": "PLAN-PRO"}])
    query = "SELECT Id, CurrencyIsoCode FROM Opportunity"
    with pytest.raises(SalesforceMalformedRequest) as refused:
        single_sf.query(query)
    assert refused.value.status == 400
    [error] = refused.value.content
    assert error["errorCode"] == "INVALID_FIELD"
    assert error["message"] == (
        f"\n{query}\n           ^\nERROR at Row:1:Column:12\n"
        "No such column 'CurrencyIsoCode' on entity 'Opportunity'. If you are attempting to use "
        "a custom field, be sure to append the '__c' after the custom field name. Please "
        "reference your WSDL or the describe call for the appropriate names."
    )
    for sobject in ("Account", "OpportunityLineItem", "PricebookEntry"):
        with pytest.raises(SalesforceMalformedRequest):
            single_sf.query(f"SELECT Id, CurrencyIsoCode FROM {sobject}")


def test_describe_records_and_change_events_carry_no_currency(
    single_org: SalesforceSandbox, single_sf: Salesforce
) -> None:
    for sobject in ("Opportunity", "OpportunityLineItem", "Account", "PricebookEntry"):
        names = {f["name"] for f in getattr(single_sf, sobject).describe()["fields"]}
        assert "CurrencyIsoCode" not in names, sobject
        assert "Id" in names
    account = single_org.create_account("Acme")
    made = single_org.create_opportunity(account, "Made", [{"product_code": "PLAN-PRO"}])
    product_id = single_org.store.all("Product2")[0]["Id"]
    created = single_sf.Opportunity.create(
        {"AccountId": account, "Name": "Through REST", "StageName": "Prospecting",
         "CloseDate": "2026-12-01"}
    )  # fmt: skip
    single_sf.OpportunityLineItem.create(
        {"OpportunityId": created["id"], "Product2Id": product_id, "Quantity": 2, "UnitPrice": 90}
    )
    single_org.close_won(made)
    for opportunity_id in (made, created["id"]):
        record = single_sf.Opportunity.get(opportunity_id)
        assert "CurrencyIsoCode" not in record
    line = single_sf.query(
        f"SELECT Id, TotalPrice FROM OpportunityLineItem WHERE OpportunityId = '{created['id']}'"
    )["records"][0]
    assert line["TotalPrice"] == 180.0
    assert "CurrencyIsoCode" not in single_sf.OpportunityLineItem.get(line["Id"])
    payloads = [e.message["data"]["payload"] for e in single_org.events.retained(CDC_CHANNEL)]
    assert len(payloads) >= 4  # two creates, the line's roll-up, the close
    assert not [p for p in payloads if "CurrencyIsoCode" in p]
    with pytest.raises(SalesforceMalformedRequest) as refused:
        single_sf.Opportunity.create(
            {"Name": "x", "StageName": "Prospecting", "CloseDate": "2026-12-01",
             "CurrencyIsoCode": "EUR"}
        )  # fmt: skip
    assert refused.value.content[0]["errorCode"] == "INVALID_FIELD"
    with pytest.raises(ValueError, match="single currency, EUR"):
        single_org.create_opportunity(account, "In dollars", [], currency="USD")


def test_the_organization_names_the_corporate_currency(
    single_org: SalesforceSandbox, single_sf: Salesforce
) -> None:
    [organization] = single_sf.query("SELECT Id, DefaultCurrencyIsoCode FROM Organization")[
        "records"
    ]
    assert organization["DefaultCurrencyIsoCode"] == "EUR"
    assert organization["Id"] == single_org.org_id


def test_multi_currency_stays_the_default(salesforce_org: SalesforceSandbox) -> None:
    assert salesforce_org.multi_currency is True
    account = salesforce_org.create_account("Acme")
    salesforce_org.create_product("PLAN-PRO", "Pro plan", unit_price=100)
    opportunity = salesforce_org.create_opportunity(
        account, "Acme deal", [{"product_code": "PLAN-PRO"}], currency="EUR"
    )
    _, [record] = salesforce_org.queries.run(
        "SELECT CurrencyIsoCode, (SELECT CurrencyIsoCode FROM OpportunityLineItems) "
        f"FROM Opportunity WHERE Id = '{opportunity}'"
    )
    assert record["CurrencyIsoCode"] == "EUR"
    assert record["OpportunityLineItems"]["records"][0]["CurrencyIsoCode"] == "EUR"

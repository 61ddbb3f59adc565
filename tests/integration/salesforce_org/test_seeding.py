"""Preparing the org for the example mappings: their products and custom fields exist."""

from __future__ import annotations

from pathlib import Path

from sf_bridge.mapping import load_mappings
from sf_bridge.sandbox.salesforce_org import prepare_for_mappings
from sf_bridge.sandbox.salesforce_org.core import Org

MAPPINGS = Path(__file__).resolve().parents[3] / "mappings"


def test_the_example_mappings_products_and_fields_are_set_up_once() -> None:
    org = Org()
    mappings = load_mappings(MAPPINGS)

    prepared = prepare_for_mappings(org, mappings)
    again = prepare_for_mappings(org, mappings)

    assert prepared == again
    assert set(prepared["products"]) == set(mappings.products)
    assert len(org.store.all("Product2")) == len(mappings.products)
    assert len(org.store.all("PricebookEntry")) == len(mappings.products)
    opportunity = org.store.object_def("Opportunity")
    assert opportunity is not None
    seats = opportunity.field_named("Seats__c")
    retention = opportunity.field_named("Data_Retention__c")
    status = opportunity.field_named("SF_Bridge_Status__c")
    assert seats is not None
    assert seats.type == "double"
    assert retention is not None
    assert retention.type == "string"
    assert status is not None
    assert "Account.Billing_Email__c" in prepared["fields"]
    names = {p["ProductCode"]: p["Name"] for p in org.store.all("Product2")}
    assert names["SB-TEAM-M"].endswith("(monthly)")
    org.queries.run("SELECT Seats__c, Account.Billing_Email__c FROM Opportunity")

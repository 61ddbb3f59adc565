"""A ramp deal with a Type, contract dates and line ServiceDates, fetched from the sandbox org
by the real client with the fields the example mappings name, and mapped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sf_bridge.crm.salesforce import SalesforceCrm
from sf_bridge.mapping import load_mappings
from sf_bridge.mapping.engine import map_opportunity
from sf_bridge.plan import AccountFacts, ProvisioningPlan
from sf_bridge.sandbox.salesforce_org import SalesforceSandbox, prepare_for_mappings
from tests.integration.intake.conftest import API_VERSION, credentials_for

MAPPINGS = Path(__file__).resolve().parents[3] / "mappings"


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    sandbox = SalesforceSandbox(port=0, long_poll_seconds=1.0).start()
    yield sandbox
    sandbox.stop()


def test_a_ramp_renewal_with_a_discount_is_fetched_and_mapped(org: SalesforceSandbox) -> None:
    mappings = load_mappings(MAPPINGS)
    prepare_for_mappings(org, mappings)
    opportunity = org.store.object_def("Opportunity")
    assert opportunity is not None
    start_field = opportunity.field_named("Contract_Start_Date__c")
    assert start_field is not None
    assert start_field.type == "date"
    account = org.create_account("Ramp Co", Billing_Email__c="ap@ramp.example")
    opp_id = org.create_opportunity(
        account,
        "Ramp Co three years",
        [
            {"product_code": "SB-TEAM-Y", "quantity": 10, "unit_price": 150, "ServiceDate": day}
            for day in ("2027-03-01", "2028-03-01")
        ]
        + [
            {
                "product_code": "SB-TEAM-Y",
                "quantity": 25,
                "unit_price": 140,
                "ServiceDate": "2029-03-01",
            }
        ],
        stage="Closed Won",
        currency="USD",
        Type="Renewal",
        Contract_Start_Date__c="2027-03-01",
        Contract_Term_Months__c=36,
        Deal_Discount_Percent__c=5,
        Deal_Discount_Duration__c="Whole contract",
    )
    crm = SalesforceCrm(credentials_for(org), api_version=API_VERSION, fields=mappings)
    [record] = crm.fetch_opportunities([opp_id])
    assert record["Type"] == "Renewal"
    assert record["OpportunityLineItems"]["records"][0]["ServiceDate"] == "2027-03-01"

    plan = map_opportunity(record, mappings, AccountFacts(live_subscription=True))
    assert isinstance(plan, ProvisioningPlan), [str(e) for e in plan]
    assert plan.intent == "renewal"
    assert plan.contract is not None
    assert (plan.contract.start_date, plan.contract.end_date) == ("2027-03-01", "2030-03-01")
    assert [(p.start_date, p.end_date) for p in plan.phases] == [
        ("2027-03-01", "2028-03-01"),
        ("2028-03-01", "2029-03-01"),
        ("2029-03-01", "2030-03-01"),
    ]
    assert [[(i.quantity, i.unit_amount) for i in p.items] for p in plan.phases] == [
        [(10, None)],
        [(10, None)],
        [(25, 14_000)],
    ]
    assert plan.phases[1].entitlements == ()
    assert {e.feature: e.value for e in plan.phases[2].entitlements}["seats"] == 25
    assert plan.discount is not None
    assert (plan.discount.percent_off, plan.discount.duration) == (5.0, "forever")

"""Mapping options beyond the example: interval from a field, products by Id, another customer
identifier, values read from the plan's line."""

from __future__ import annotations

from pathlib import Path

import pytest

from sf_bridge.mapping import Mappings, load_mappings
from sf_bridge.mapping.engine import map_opportunity
from sf_bridge.plan import ProvisioningPlan
from tests.fixtures.mapping import copy_mappings, make_opportunity, opportunity_line

SF = "salesforce.yaml"


@pytest.fixture
def interval_from_field(tmp_path: Path) -> Mappings:
    folder = copy_mappings(
        tmp_path / "m",
        {
            SF: [
                (
                    "  SB-ENT-CUSTOM: {plan: enterprise_custom}\n",
                    "  SB-ENT-CUSTOM: {plan: enterprise_custom}\n  SB-ENT: {plan: enterprise}\n",
                ),
                (
                    "billing:\n",
                    "billing:\n  interval:\n    field: Opportunity.Billing_Frequency__c\n"
                    "    values: {Monthly: month, Annual: year}\n",
                ),
            ]
        },
    )
    return load_mappings(folder)


@pytest.mark.parametrize(
    ("frequency", "interval", "lookup_key"),
    [
        ("Monthly", "month", "enterprise_monthly_usd"),
        ("annual", "year", "enterprise_yearly_usd"),
    ],
)
def test_interval_from_a_deal_field(
    interval_from_field: Mappings, frequency: str, interval: str, lookup_key: str
) -> None:
    opp = make_opportunity(
        [opportunity_line("00kE", "SB-ENT", 1, 1.0)], Billing_Frequency__c=frequency
    )
    plan = map_opportunity(opp, interval_from_field)
    assert isinstance(plan, ProvisioningPlan), plan
    assert plan.billing is not None
    assert plan.billing.interval == interval
    assert plan.items[0].lookup_key == lookup_key
    assert "Billing_Frequency__c" in interval_from_field.query_fields()[0]


def test_interval_field_empty_without_default(interval_from_field: Mappings) -> None:
    opp = make_opportunity([opportunity_line("00kE", "SB-ENT", 1, 2500.0)])
    errors = map_opportunity(opp, interval_from_field)
    assert isinstance(errors, list)
    assert [e.code for e in errors] == ["missing_value"]
    assert errors[0].where == "Opportunity.Billing_Frequency__c"
    assert "billing interval is not set" in errors[0].message


def test_interval_field_with_an_unknown_value(interval_from_field: Mappings) -> None:
    opp = make_opportunity(
        [opportunity_line("00kE", "SB-ENT", 1, 2500.0)], Billing_Frequency__c="Quarterly"
    )
    errors = map_opportunity(opp, interval_from_field)
    assert isinstance(errors, list)
    assert [e.code for e in errors] == ["unknown_picklist_value"]
    assert "'Quarterly' is not a value the mapping knows" in errors[0].message


def test_products_matched_by_product2_id(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "all.yaml").write_text(
        "features:\n  seats: {type: seats}\n"
        "plans:\n  basic:\n    kind: paid\n    priced_per: seats\n    entitlements: {}\n"
        "    prices:\n      - {lookup_key: basic_m, currency: USD, interval: month, amount: 9}\n"
        "currencies: [USD]\n"
        "match_products_by: product_id\n"
        "products:\n  01tHs00000TeamMAAA: {plan: basic, interval: month}\n"
    )
    mappings = load_mappings(folder)
    line = opportunity_line("00kT", "SOMETHING-ELSE", 3, 9)
    line["PricebookEntry"]["Product2Id"] = "01tHs00000TeamM"  # the 15-character form
    plan = map_opportunity(make_opportunity([line], Payment_Method__c="Credit card"), mappings)
    assert isinstance(plan, ProvisioningPlan), plan
    assert plan.plan_name == "basic"
    assert plan.items[0].product_code == "01tHs00000TeamM"
    assert {e.feature: e.value for e in plan.entitlements} == {"seats": 3}


def test_customer_identified_by_an_account_field(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {SF: [("  identifier: Account.Id", "  identifier: Account.Customer_Number__c")]},
    )
    mappings = load_mappings(folder)
    assert "Account.Customer_Number__c" in mappings.query_fields()[0]
    opp = make_opportunity([opportunity_line("00kE", "SB-ENT-Y", 1, 25000)])
    opp["Account"]["Customer_Number__c"] = "CUST-0042"
    plan = map_opportunity(opp, mappings)
    assert isinstance(plan, ProvisioningPlan), plan
    assert plan.customer.customer_key == "CUST-0042/USD"  # split per currency by default
    assert plan.customer.account_id == "001Hs00009TestAAAQ"
    del opp["Account"]["Customer_Number__c"]
    errors = map_opportunity(opp, mappings)
    assert isinstance(errors, list)
    assert [(e.code, e.where) for e in errors] == [
        ("missing_customer_identifier", "Account.Customer_Number__c")
    ]


def test_a_variable_value_read_from_the_plan_line(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {SF: [("  seats: Opportunity.Seats__c", "  seats: OpportunityLineItem.Seats__c")]},
    )
    mappings = load_mappings(folder)
    assert "Seats__c" in mappings.query_fields()[1]
    line = opportunity_line("00kC", "SB-ENT-CUSTOM", 1, 0)
    line["Seats__c"] = 321.0
    plan = map_opportunity(make_opportunity([line]), mappings)
    assert isinstance(plan, ProvisioningPlan), plan
    assert {e.feature: e.value for e in plan.entitlements}["seats"] == 321


def test_a_deal_not_yet_won_is_previewed_with_a_note(example_mappings: Mappings) -> None:
    opp = make_opportunity(
        [opportunity_line("00kE", "SB-ENT-Y", 1, 25000)], StageName="Negotiation", IsWon=False
    )
    plan = map_opportunity(opp, example_mappings)
    assert isinstance(plan, ProvisioningPlan), plan
    assert any("'Negotiation' is not a won stage" in n for n in plan.notes)


def test_lines_subquery_may_be_null(example_mappings: Mappings) -> None:
    opp = make_opportunity([])
    opp["OpportunityLineItems"] = None
    errors = map_opportunity(opp, example_mappings)
    assert isinstance(errors, list)
    assert [e.code for e in errors] == ["no_plan"]

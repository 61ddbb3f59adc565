"""Intent, amendments, contract dates, ramps and deal discounts in the mapping engine."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from sf_bridge.mapping import Mappings, load_mappings
from sf_bridge.mapping.engine import map_opportunity
from sf_bridge.plan import AccountFacts, ContractTerms, MappingError, ProvisioningPlan
from tests.fixtures.mapping import copy_mappings, make_opportunity, opportunity_line

LIVE = AccountFacts(live_subscription=True, plan_name="enterprise")


def plan_of(result: ProvisioningPlan | list[MappingError]) -> ProvisioningPlan:
    assert isinstance(result, ProvisioningPlan), [str(e) for e in result]
    return result


def codes(result: ProvisioningPlan | list[MappingError]) -> list[str]:
    assert isinstance(result, list), result
    return [e.code for e in result]


def team_deal(**fields: Any) -> dict[str, Any]:
    lines = [
        opportunity_line("00kA1", "SB-TEAM-M", 10.0),
        opportunity_line("00kA2", "SB-ANALYTICS-M", 1.0),
    ]
    return make_opportunity(lines, Seats__c=10.0, **fields)


def seats_only(**fields: Any) -> dict[str, Any]:
    return make_opportunity([opportunity_line("00kB1", "SB-SEATS-M", 20.0)], **fields)


def test_without_any_terms_a_deal_is_new_business_starting_now(
    example_mappings: Mappings,
) -> None:
    plan = plan_of(map_opportunity(team_deal(), example_mappings))
    assert plan.intent == "new_business"
    assert (plan.contract, plan.phases, plan.discount) == (None, (), None)
    assert (plan.amendment_lines, plan.proration) == (None, None)


@pytest.mark.parametrize(
    ("deal_type", "intent"),
    [
        ("New Customer", "new_business"),
        ("Existing Customer - Upgrade", "amendment"),
        ("Existing Customer - Downgrade", "amendment"),
        ("Existing Customer - Replacement", "amendment"),
        ("Renewal", "renewal"),
    ],
)
def test_the_deal_type_picklist_gives_the_intent(
    example_mappings: Mappings, deal_type: str, intent: str
) -> None:
    plan = plan_of(map_opportunity(team_deal(Type=deal_type), example_mappings, LIVE))
    assert plan.intent == intent
    if intent == "amendment":
        assert (plan.amendment_lines, plan.proration) == ("additions", "create_prorations")


def test_an_empty_type_on_an_account_with_a_live_subscription_and_no_plan_is_an_amendment(
    example_mappings: Mappings,
) -> None:
    plan = plan_of(map_opportunity(seats_only(), example_mappings, LIVE))
    assert plan.intent == "amendment"
    assert plan.plan_name == "enterprise"
    assert [(i.name, i.quantity) for i in plan.items] == [("extra_seats", 20)]
    assert {e.feature: e.value for e in plan.entitlements} == {"seats": 20}
    assert any("intent inferred" in n for n in plan.notes)


def test_an_add_on_only_deal_without_a_live_subscription_still_has_no_plan(
    example_mappings: Mappings,
) -> None:
    assert codes(map_opportunity(seats_only(), example_mappings)) == ["no_plan"]
    no_sub = AccountFacts(live_subscription=False)
    assert codes(map_opportunity(seats_only(), example_mappings, no_sub)) == ["no_plan"]


def test_an_amendment_on_an_account_without_a_subscription_is_refused(
    example_mappings: Mappings,
) -> None:
    facts = AccountFacts(live_subscription=False)
    result = map_opportunity(
        seats_only(Type="Existing Customer - Upgrade"), example_mappings, facts
    )
    assert "no_subscription_to_amend" in codes(result)


def test_an_amendment_with_an_unknown_current_plan_maps_with_a_note(
    example_mappings: Mappings,
) -> None:
    deal = seats_only(Type="Existing Customer - Upgrade")
    plan = plan_of(map_opportunity(deal, example_mappings, AccountFacts(True, None)))
    assert plan.plan_name == ""
    assert any("current plan is not known" in n for n in plan.notes)


def test_an_unlisted_type_falls_back_to_the_inference(example_mappings: Mappings) -> None:
    plan = plan_of(map_opportunity(team_deal(Type="Partner resale"), example_mappings, LIVE))
    assert plan.intent == "new_business"
    assert any("'Partner resale' is not listed" in n for n in plan.notes)


def test_contract_start_and_term_give_the_end(example_mappings: Mappings) -> None:
    deal = team_deal(Contract_Start_Date__c="2027-01-31", Contract_Term_Months__c=13.0)
    plan = plan_of(map_opportunity(deal, example_mappings))
    assert plan.contract == ContractTerms(
        "2027-01-31",
        "2028-02-29",
        13,
        "start_now",
        "Opportunity.Contract_Start_Date__c; Opportunity.Contract_Term_Months__c",
    )
    assert plan.contract.start_mode(date(2026, 12, 1)) == "scheduled"
    assert plan.contract.start_mode(date(2027, 1, 31)) == "now"
    assert plan.contract.start_mode(date(2027, 3, 1)) == "now"
    backdated = ContractTerms("2027-01-31", past_start="backdate")
    assert backdated.start_mode(date(2027, 3, 1)) == "backdated"


def test_a_contract_start_that_is_not_a_date(example_mappings: Mappings) -> None:
    result = map_opportunity(team_deal(Contract_Start_Date__c="next month"), example_mappings)
    assert codes(result) == ["invalid_date"]


def test_a_term_below_one_month(example_mappings: Mappings) -> None:
    deal = team_deal(Contract_Start_Date__c="2027-01-01", Contract_Term_Months__c=0.0)
    assert codes(map_opportunity(deal, example_mappings)) == ["invalid_value"]


def ramp(**fields: Any) -> dict[str, Any]:
    years = []
    for n, (day, seats, price) in enumerate(
        [("2027-01-01", 10.0, 15.0), ("2028-01-01", 20.0, 14.0), ("2029-01-01", 30.0, 13.0)]
    ):
        line = opportunity_line(f"00kR{n}", "SB-TEAM-M", seats, price)
        line["ServiceDate"] = day
        years.append(line)
    return make_opportunity(years, Seats__c=10.0, **fields)


def test_lines_with_different_service_dates_are_phases(example_mappings: Mappings) -> None:
    plan = plan_of(map_opportunity(ramp(Contract_Term_Months__c=36.0), example_mappings))
    assert plan.contract is not None
    assert (plan.contract.start_date, plan.contract.end_date) == ("2027-01-01", "2030-01-01")
    assert [(p.start_date, p.end_date) for p in plan.phases] == [
        ("2027-01-01", "2028-01-01"),
        ("2028-01-01", "2029-01-01"),
        ("2029-01-01", "2030-01-01"),
    ]
    assert [[(i.quantity, i.unit_amount) for i in p.items] for p in plan.phases] == [
        [(10, None)],
        [(20, 1400)],
        [(30, 1300)],
    ]
    assert plan.items == plan.phases[0].items
    assert plan.phases[0].entitlements == ()
    assert {e.feature: e.value for e in plan.phases[2].entitlements}["seats"] == 30


def test_a_line_after_the_contract_ends(example_mappings: Mappings) -> None:
    result = map_opportunity(ramp(Contract_Term_Months__c=12.0), example_mappings)
    assert codes(result) == ["line_outside_contract"]


def test_a_line_before_the_contract_starts(example_mappings: Mappings) -> None:
    result = map_opportunity(ramp(Contract_Start_Date__c="2027-06-01"), example_mappings)
    assert codes(result) == ["line_outside_contract"]


def test_a_phase_selling_another_plan(example_mappings: Mappings) -> None:
    deal = ramp()
    lines = deal["OpportunityLineItems"]["records"]
    lines[2]["PricebookEntry"]["Product2"]["ProductCode"] = "SB-ENT-M"
    assert "multiple_plans" in codes(map_opportunity(deal, example_mappings))


def test_a_percent_discount_for_some_months(example_mappings: Mappings) -> None:
    deal = team_deal(
        Deal_Discount_Percent__c=15.5,
        Deal_Discount_Duration__c="Several months",
        Deal_Discount_Months__c=6.0,
    )
    discount = plan_of(map_opportunity(deal, example_mappings)).discount
    assert discount is not None
    assert (discount.percent_off, discount.amount_off, discount.duration, discount.months) == (
        15.5,
        None,
        "repeating",
        6,
    )


def test_an_amount_discount_once_in_the_deal_currency(example_mappings: Mappings) -> None:
    deal = team_deal(Deal_Discount_Amount__c=500.0)
    discount = plan_of(map_opportunity(deal, example_mappings)).discount
    assert discount is not None
    assert (discount.amount_off, discount.currency, discount.duration) == (50_000, "usd", "once")


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"Deal_Discount_Percent__c": 120.0}, "invalid_discount"),
        ({"Deal_Discount_Amount__c": -5.0}, "invalid_discount"),
        ({"Deal_Discount_Percent__c": 12.345}, "invalid_discount"),
        (
            {"Deal_Discount_Percent__c": 10.0, "Deal_Discount_Amount__c": 5.0},
            "conflicting_discount",
        ),
        (
            {"Deal_Discount_Percent__c": 10.0, "Deal_Discount_Duration__c": "Several months"},
            "missing_value",
        ),
        (
            {"Deal_Discount_Percent__c": 10.0, "Deal_Discount_Duration__c": "Always"},
            "unknown_picklist_value",
        ),
    ],
)
def test_bad_deal_discounts(example_mappings: Mappings, fields: dict[str, Any], code: str) -> None:
    assert codes(map_opportunity(team_deal(**fields), example_mappings)) == [code]


def test_the_plan_round_trips_through_json_and_old_plans_load(
    example_mappings: Mappings,
) -> None:
    deal = ramp(
        Type="Renewal",
        Contract_Term_Months__c=36.0,
        Deal_Discount_Percent__c=10.0,
    )
    plan = plan_of(map_opportunity(deal, example_mappings))
    assert ProvisioningPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    old = plan.to_dict()
    for key in ("intent", "amendment_lines", "proration", "contract", "phases", "discount"):
        del old[key]
    loaded = ProvisioningPlan.from_dict(old)
    assert (loaded.intent, loaded.contract, loaded.phases, loaded.discount) == (
        "new_business",
        None,
        (),
        None,
    )
    assert loaded.items == plan.items


def test_the_preview_shows_intent_contract_phases_and_discount(
    example_mappings: Mappings,
) -> None:
    from rich.console import Console

    from sf_bridge.mapping.render import print_plan

    deal = ramp(
        Type="Renewal",
        Contract_Term_Months__c=36.0,
        Deal_Discount_Percent__c=10.0,
        Deal_Discount_Duration__c="Several months",
        Deal_Discount_Months__c=3.0,
    )
    console = Console(record=True, width=200)
    print_plan(console, plan_of(map_opportunity(deal, example_mappings)))
    text = console.export_text()
    assert "Intent: renewal" in text
    assert "Contract: 2027-01-01 to 2030-01-01; a start in the past: start_now" in text
    assert "team x 20 at 14.00 USD" in text
    assert "seats 30" in text
    assert "Discount: 10% off, 3 months" in text


def test_one_line_start_date_or_unchanged_years_are_no_ramp(example_mappings: Mappings) -> None:
    deal = ramp()
    for line in deal["OpportunityLineItems"]["records"]:
        line["Quantity"], line["UnitPrice"] = 10.0, 15.0
    plan = plan_of(map_opportunity(deal, example_mappings))
    assert plan.phases == ()
    assert plan.contract is not None
    assert plan.contract.start_date == "2027-01-01"
    assert [(i.quantity, i.line_item_id) for i in plan.items] == [(10, "00kR0")]


def test_without_the_terms_sections_the_inference_still_applies(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path / "m")
    text = (folder / "salesforce.yaml").read_text()
    cut = text.index("\n# What the deal does to the account")
    (folder / "salesforce.yaml").write_text(text[:cut] + "\n")
    mappings = load_mappings(folder)
    assert mappings.terms is None
    plan = plan_of(map_opportunity(seats_only(Type="New Customer"), mappings, LIVE))
    assert (plan.intent, plan.amendment_lines, plan.proration) == (
        "amendment",
        "additions",
        "create_prorations",
    )
    assert codes(map_opportunity(seats_only(), mappings)) == ["no_plan"]


def test_preview_maps_an_amendment_onto_the_plan_it_is_told(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sf_bridge.cli import app

    path = tmp_path / "seats.json"
    path.write_text(json.dumps(seats_only(Type="Existing Customer - Upgrade")))
    args = ["mappings", "preview", "--file", str(path), "--no-stripe", "--json"]
    told = CliRunner().invoke(app, [*args, "--account-plan", "enterprise"])
    assert told.exit_code == 0, told.output
    body = told.stdout[told.stdout.index("{\n") :]  # after any log line
    plan = json.loads(body)["plan"]
    assert (plan["intent"], plan["plan_name"], plan["amendment_lines"]) == (
        "amendment",
        "enterprise",
        "additions",
    )
    untold = CliRunner().invoke(app, args[:-1])
    assert "Plan: the account's current plan (not known)" in untold.stdout


def test_a_renewal_ramp_keeps_every_year_with_its_prices_and_seats(
    example_mappings: Mappings,
) -> None:
    """A renewal with lines for three years: all three phases reach the plan (provisioning
    adds each to the live subscription's schedule), with the renewal's contract dates."""
    deal = ramp(Type="Renewal", Contract_Term_Months__c=36.0)
    plan = plan_of(map_opportunity(deal, example_mappings, LIVE))
    assert plan.intent == "renewal"
    assert plan.is_ramp
    assert [
        (p.start_date, [(i.quantity, i.unit_amount) for i in p.items]) for p in plan.phases
    ] == [
        ("2027-01-01", [(10, None)]),
        ("2028-01-01", [(20, 1400)]),
        ("2029-01-01", [(30, 1300)]),
    ]
    assert plan.contract is not None
    assert plan.contract.end_date == "2030-01-01"
    stored = ProvisioningPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert stored.phases == plan.phases


def test_an_amendment_starting_later_keeps_its_date_and_is_not_a_ramp(
    example_mappings: Mappings,
) -> None:
    deal = seats_only(Type="Existing Customer - Upgrade", Contract_Start_Date__c="2027-03-01")
    plan = plan_of(map_opportunity(deal, example_mappings, LIVE))
    assert (plan.intent, plan.is_ramp) == ("amendment", False)
    assert plan.contract is not None
    assert plan.contract.start_mode(date(2027, 2, 1)) == "scheduled"

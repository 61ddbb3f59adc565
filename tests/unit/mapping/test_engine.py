"""The mapping engine on the example opportunities and every mapping error code."""

from __future__ import annotations

import copy
import dataclasses
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from sf_bridge.mapping import Mappings, load_mappings
from sf_bridge.mapping.engine import map_opportunity
from sf_bridge.plan import MappingError, ProvisioningPlan
from tests.fixtures.mapping import EXAMPLE_MAPPINGS_DIR, make_opportunity, opportunity_line

Loader = Callable[[str], dict[str, Any]]


def plan_of(result: ProvisioningPlan | list[MappingError]) -> ProvisioningPlan:
    assert isinstance(result, ProvisioningPlan), [str(e) for e in result]
    return result


def errors_of(result: ProvisioningPlan | list[MappingError]) -> list[MappingError]:
    assert isinstance(result, list), result
    return result


def only_error(result: ProvisioningPlan | list[MappingError], code: str) -> MappingError:
    errors = errors_of(result)
    assert [e.code for e in errors] == [code], [str(e) for e in errors]
    return errors[0]


def ents(plan: ProvisioningPlan) -> dict[str, int | bool]:
    return {e.feature: e.value for e in plan.entitlements}


# -- the example opportunities ---------------------------------------------------------------


def test_negotiated_enterprise_deal(
    example_mappings: Mappings, example_opportunity: Loader
) -> None:
    plan = plan_of(map_opportunity(example_opportunity("enterprise-negotiated"), example_mappings))
    assert (plan.plan_name, plan.plan_kind) == ("enterprise", "paid")
    assert plan.mapping_version == example_mappings.version
    assert plan.customer.email == "billing@acme.example"
    assert plan.customer.customer_key == "001Hs00002AcmeCAAQ/USD"
    assert plan.billing is not None
    assert (plan.billing.collection_method, plan.billing.days_until_due) == ("send_invoice", 45)
    assert (plan.billing.interval, plan.billing.currency) == ("year", "usd")
    items = {i.name: i for i in plan.items}
    assert items["enterprise"].unit_amount == 2_200_000  # 25,000 less 12%
    assert items["enterprise"].catalog_unit_amount == 2_500_000
    assert items["enterprise"].lookup_key == "enterprise_yearly_usd"
    assert (items["extra_seats"].quantity, items["extra_seats"].unit_amount) == (40, 18_000)
    assert items["advanced_analytics"].unit_amount is None
    assert not items["advanced_analytics"].has_override
    assert ents(plan)["seats"] == 140
    assert ents(plan)["advanced_analytics"] is True
    by_feature = {e.feature: e for e in plan.entitlements}
    assert by_feature["seats"].source == "plan enterprise + add-on extra_seats 1 x 40"
    assert ProvisioningPlan.from_dict(plan.to_dict()) == plan


def test_self_serve_deal_is_charged_automatically(
    example_mappings: Mappings, example_opportunity: Loader
) -> None:
    plan = plan_of(map_opportunity(example_opportunity("team-self-serve"), example_mappings))
    assert plan.billing is not None
    assert plan.billing.collection_method == "charge_automatically"
    assert plan.billing.days_until_due is None
    assert plan.billing.currency == "eur"
    assert [i.lookup_key for i in plan.items] == ["team_monthly_eur", "sandbox_monthly_eur"]
    assert all(i.unit_amount is None for i in plan.items)
    assert ents(plan)["seats"] == 12  # priced per seat: the quantity
    assert ents(plan)["environments"] == 2
    assert ents(plan)["sso"] is False


def test_custom_contract_takes_values_from_the_deal(
    example_mappings: Mappings, example_opportunity: Loader
) -> None:
    plan = plan_of(map_opportunity(example_opportunity("custom-contract"), example_mappings))
    assert plan.is_custom
    assert plan.billing is None
    assert plan.items == ()
    assert ents(plan)["seats"] == 750
    assert ents(plan)["api_calls"] == 25_000_000  # from the text "25,000,000"
    assert ents(plan)["data_retention"] == 730  # picklist "2 years"
    assert ents(plan)["advanced_analytics"] is True
    sources = {e.feature: e.source for e in plan.entitlements}
    assert sources["data_retention"] == "Opportunity.Data_Retention__c = '2 years'"
    assert any("not billed in Stripe" in n for n in plan.notes)


def test_catalog_price_deal_has_no_override(
    example_mappings: Mappings, example_opportunity: Loader
) -> None:
    plan = plan_of(map_opportunity(example_opportunity("enterprise-list-price"), example_mappings))
    assert [i.unit_amount for i in plan.items] == [None]
    assert plan.billing is not None
    assert plan.billing.days_until_due == 30


def test_variable_default_applies_when_the_field_is_empty(
    example_mappings: Mappings, example_opportunity: Loader
) -> None:
    opp = example_opportunity("custom-contract")
    opp["Data_Retention__c"] = None
    plan = plan_of(map_opportunity(opp, example_mappings))
    assert ents(plan)["data_retention"] == 730
    assert {e.feature: e.source for e in plan.entitlements}["data_retention"] == (
        "default of plan enterprise_custom"
    )


def test_catalog_policy_keeps_catalog_price(
    example_mappings: Mappings, example_opportunity: Loader
) -> None:
    mappings = dataclasses.replace(example_mappings, price_override_policy="catalog")
    plan = plan_of(map_opportunity(example_opportunity("enterprise-negotiated"), mappings))
    assert all(i.unit_amount is None for i in plan.items)
    assert any("charged at the catalog price" in n for n in plan.notes)


def test_the_input_is_not_changed(example_mappings: Mappings, example_opportunity: Loader) -> None:
    opp = example_opportunity("enterprise-negotiated")
    before = copy.deepcopy(opp)
    first = map_opportunity(opp, example_mappings)
    assert opp == before
    assert map_opportunity(opp, example_mappings) == first


def test_net_terms_text_without_a_picklist_table(example_mappings: Mappings) -> None:
    billing = dataclasses.replace(
        example_mappings.billing,
        payment_terms=dataclasses.replace(example_mappings.billing.payment_terms, values=()),  # type: ignore[arg-type]
    )
    mappings = dataclasses.replace(example_mappings, billing=billing)
    opp = make_opportunity(
        [opportunity_line("00k1", "SB-ENT-M", 1, 2500)], Payment_Terms__c="Net 75"
    )
    plan = plan_of(map_opportunity(opp, mappings))
    assert plan.billing is not None
    assert plan.billing.days_until_due == 75


# -- every error code ------------------------------------------------------------------------


def ent_line(**kw: Any) -> dict[str, Any]:
    return opportunity_line("00kENT", "SB-ENT-Y", 1, 25000, **kw)


ERROR_CASES: list[tuple[str, Callable[[], dict[str, Any]], list[str]]] = [
    (
        "unknown_product",
        lambda: make_opportunity([ent_line(), opportunity_line("00kX", "SB-GOLD", 1, 10)]),
        ["line item 00kX (product SB-GOLD)", "'SB-GOLD' is not in the mapping", "under 'products'"],
    ),
    (
        "no_plan",
        lambda: make_opportunity([opportunity_line("00kA", "SB-ANALYTICS-Y", 1, 5000)]),
        ["no line item for a plan", "add exactly one plan product"],
    ),
    (
        "multiple_plans",
        lambda: make_opportunity([ent_line(), opportunity_line("00kT", "SB-TEAM-Y", 5, 150)]),
        ["2 plan lines", "SB-ENT-Y (enterprise)", "SB-TEAM-Y (team)", "keep one plan line"],
    ),
    (
        "addon_not_allowed",
        lambda: make_opportunity(
            [
                opportunity_line("00kT", "SB-TEAM-M", 5, 15),
                opportunity_line("00kS", "SB-SEATS-M", 5, 20),
            ]
        ),
        [
            "line item 00kS (product SB-SEATS-M)",
            "'extra_seats' cannot be sold with the plan 'team'",
            "add 'team' to 'sold_with'",
        ],
    ),
    (
        "too_many_items",
        lambda: make_opportunity(
            [ent_line()]
            + [opportunity_line(f"00kS{n:02}", "SB-SEATS-Y", 1, 180 + n) for n in range(20)]
        ),
        [
            "the deal needs 21 subscription items (enterprise, extra_seats at 20 prices)",
            "at most 20",
            "give the lines of each product one price",
        ],
    ),
    (
        "missing_value",
        lambda: make_opportunity([opportunity_line("00kC", "SB-ENT-CUSTOM", 1, 0)]),
        ["Opportunity.Seats__c", "the 'seats' entitlement", "fill in Opportunity.Seats__c"],
    ),
    (
        "invalid_value",
        lambda: make_opportunity(
            [opportunity_line("00kC", "SB-ENT-CUSTOM", 1, 0)], Seats__c="about forty"
        ),
        ["Opportunity.Seats__c", "must be a number", "'about forty'"],
    ),
    (
        "value_out_of_bounds",
        lambda: make_opportunity([opportunity_line("00kC", "SB-ENT-CUSTOM", 1, 0)], Seats__c=0),
        ["Opportunity.Seats__c", "is 0, but the mapping allows only between 1 and 100000"],
    ),
    (
        "invalid_quantity",
        lambda: make_opportunity([ent_line(), opportunity_line("00kS", "SB-SEATS-Y", 2.5, 200)]),
        ["line item 00kS (product SB-SEATS-Y)", "the quantity is 2.5", "whole number"],
    ),
    (
        "unsupported_currency",
        lambda: make_opportunity([ent_line()], currency="GBP"),
        ["Opportunity.CurrencyIsoCode", "in GBP", "bills only in USD, EUR"],
    ),
    (
        "mixed_intervals",
        lambda: make_opportunity([ent_line(), opportunity_line("00kS", "SB-SEATS-M", 5, 20)]),
        ["SB-ENT-Y: yearly", "SB-SEATS-M: monthly", "split the deal"],
    ),
    (
        "missing_customer_identifier",
        lambda: make_opportunity([ent_line()], AccountId=None, Account=None),
        ["Account.Id", "identifies the customer", "attach the deal to an account"],
    ),
    (
        "missing_billing_email",
        lambda: make_opportunity(
            [ent_line()],
            Account={"Id": "001Hs00009TestAAAQ", "Name": "No Mail", "Billing_Email__c": None},
        ),
        ["invoiced but has no billing email", "Opportunity.Billing_Email__c"],
    ),
    (
        "invalid_billing_email",
        lambda: make_opportunity([ent_line()], Billing_Email__c="accounts at acme"),
        ["Opportunity.Billing_Email__c", "'accounts at acme'", "not an email address"],
    ),
    (
        "invalid_price",
        lambda: make_opportunity([ent_line(discount=120.0)]),
        ["line item 00kENT (product SB-ENT-Y)", "discount is 120", "between 0 and 100"],
    ),
    (
        "unknown_picklist_value",
        lambda: make_opportunity([ent_line()], Payment_Terms__c="Net 50"),
        [
            "Opportunity.Payment_Terms__c",
            "'Net 50' is not a value the mapping knows",
            "did you mean",
        ],
    ),
    (
        "invalid_opportunity",
        lambda: {"attributes": {"type": "Opportunity"}, "Name": "no id"},
        ["has no Id"],
    ),
]


@pytest.mark.parametrize(
    ("code", "build", "expected"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES]
)
def test_each_mapping_error_names_the_line_or_field_and_the_fix(
    example_mappings: Mappings,
    code: str,
    build: Callable[[], dict[str, Any]],
    expected: list[str],
) -> None:
    error = only_error(map_opportunity(build(), example_mappings), code)
    assert error.hint
    text = str(error)
    for fragment in expected:
        assert fragment in text, text


def test_no_catalog_price(example_mappings: Mappings) -> None:
    ent = example_mappings.plans["enterprise"]
    without_eur_year = tuple(p for p in ent.prices if (p.currency, p.interval) != ("eur", "year"))
    plans = {
        **example_mappings.plans,
        "enterprise": dataclasses.replace(ent, prices=without_eur_year),
    }
    mappings = dataclasses.replace(example_mappings, plans=plans)
    error = only_error(
        map_opportunity(make_opportunity([ent_line()], "EUR"), mappings), "no_catalog_price"
    )
    assert "the plan 'enterprise' has no yearly catalog price in EUR" in error.message
    assert "'currency: EUR' and 'interval: year'" in error.hint


def test_price_override_not_allowed(
    example_mappings: Mappings, example_opportunity: Loader
) -> None:
    mappings = dataclasses.replace(example_mappings, price_override_policy="reject")
    errors = errors_of(map_opportunity(example_opportunity("enterprise-negotiated"), mappings))
    assert [e.code for e in errors] == ["price_override_not_allowed"] * 2
    assert "22,000.00 USD instead of the catalog 25,000.00 USD" in errors[0].message
    assert errors[0].where == "line item 00kHs00003AcmeEntA (product SB-ENT-Y)"


def test_lines_of_one_product_at_one_price_are_one_item(example_mappings: Mappings) -> None:
    # 1 plan line and 499 add-on lines at two prices give 3 subscription items.
    lines = [ent_line()]
    lines += [opportunity_line(f"00kS{n:03}", "SB-SEATS-Y", 2, 180) for n in range(300)]
    lines += [opportunity_line(f"00kA{n:03}", "SB-SANDBOX-Y", 1, None) for n in range(199)]
    plan = plan_of(map_opportunity(make_opportunity(lines), example_mappings))
    summary = [(i.name, i.quantity, i.unit_amount, i.line_item_id) for i in plan.items]
    assert summary == [
        ("enterprise", 1, None, "00kENT"),
        ("extra_seats", 600, 18_000, "00kS000"),
        ("extra_sandbox", 199, None, "00kA000"),
    ]
    assert ents(plan)["seats"] == 100 + 600
    assert ents(plan)["environments"] == 2 + 199
    merged = [n for n in plan.notes if "one subscription item" in n]
    assert merged == [
        "line items 00kS000, 00kS001, 00kS002 and 297 more (product SB-SEATS-Y): 300 lines of "
        "the add-on 'extra_seats' at 180.00 USD are one subscription item of quantity 600.",
        "line items 00kA000, 00kA001, 00kA002 and 196 more (product SB-SANDBOX-Y): 199 lines "
        "of the add-on 'extra_sandbox' at 2,500.00 USD are one subscription item of quantity "
        "199.",
    ]


def test_one_add_on_at_two_prices_is_two_items(example_mappings: Mappings) -> None:
    lines = [
        ent_line(),
        opportunity_line("00kS1", "SB-SEATS-Y", 10, 200),
        opportunity_line("00kS2", "SB-SEATS-Y", 5, 150),
        opportunity_line("00kS3", "SB-SEATS-Y", 3, None),
    ]
    plan = plan_of(map_opportunity(make_opportunity(lines), example_mappings))
    seats = [(i.quantity, i.unit_amount) for i in plan.items if i.name == "extra_seats"]
    assert seats == [(13, None), (5, 15_000)]
    assert ents(plan)["seats"] == 100 + 18


def test_plan_sold_more_than_once_is_an_invalid_quantity(example_mappings: Mappings) -> None:
    opp = make_opportunity([opportunity_line("00kE", "SB-ENT-Y", 2, 25000)])
    error = only_error(map_opportunity(opp, example_mappings), "invalid_quantity")
    assert "sold once per deal, but the quantity is 2" in error.message
    over_two_lines = make_opportunity([ent_line(), opportunity_line("00kE2", "SB-ENT-Y", 1, 25000)])
    error = only_error(map_opportunity(over_two_lines, example_mappings), "invalid_quantity")
    assert "the quantity is 2 over 2 lines" in error.message


@pytest.mark.parametrize("quantity", [0.0, -3.0, None])
def test_zero_negative_or_missing_quantity(example_mappings: Mappings, quantity: Any) -> None:
    opp = make_opportunity([ent_line(), opportunity_line("00kS", "SB-SEATS-Y", 1, 200)])
    opp["OpportunityLineItems"]["records"][1]["Quantity"] = quantity
    error = only_error(map_opportunity(opp, example_mappings), "invalid_quantity")
    assert f"the quantity is {quantity!r}" in error.message


def test_line_without_product_code(example_mappings: Mappings) -> None:
    opp = make_opportunity([ent_line(), opportunity_line("00kN", None, 1, 5)])
    error = only_error(map_opportunity(opp, example_mappings), "unknown_product")
    assert error.where == "line item 00kN"
    assert "has no product code" in error.message


def test_fractional_variable_value(example_mappings: Mappings) -> None:
    opp = make_opportunity([opportunity_line("00kC", "SB-ENT-CUSTOM", 1, 0)], Seats__c=12.5)
    error = only_error(map_opportunity(opp, example_mappings), "invalid_value")
    assert "must be a whole number" in error.message


def test_all_errors_are_reported_together(example_mappings: Mappings) -> None:
    opp = make_opportunity(
        [
            ent_line(discount=150.0),
            opportunity_line("00kX", "SB-NOPE", 1, 1),
            opportunity_line("00kS", "SB-SEATS-Y", 0, 200),
        ],
        Payment_Terms__c="Net 99",
        Billing_Email__c="nope",
    )
    codes = sorted(e.code for e in errors_of(map_opportunity(opp, example_mappings)))
    assert codes == [
        "invalid_billing_email",
        "invalid_price",
        "invalid_quantity",
        "unknown_picklist_value",
        "unknown_product",
    ]


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("UnitPrice", float("nan"), "must be an amount between 0 and 10,000,000,000"),
        ("UnitPrice", 1e308, "must be an amount between 0 and 10,000,000,000"),
        ("UnitPrice", -5.0, "must be an amount between 0"),
        ("Discount", "a lot", "the discount is 'a lot'; it must be a percentage"),
    ],
)
def test_prices_that_are_not_amounts(
    example_mappings: Mappings, field: str, value: Any, fragment: str
) -> None:
    line = ent_line()
    line[field] = value
    error = only_error(map_opportunity(make_opportunity([line]), example_mappings), "invalid_price")
    assert fragment in error.message


def _team_deal(currency: str, account_id: str, parent: str | None = None) -> dict[str, Any]:
    opp = make_opportunity(
        [
            opportunity_line(
                "00kHs0000TEAM1AAA", "SB-TEAM-M", 5, 15.0 if currency == "USD" else 14.0
            )
        ],
        currency=currency,
        AccountId=account_id,
    )
    opp["Account"]["Id"] = account_id
    opp["Account"]["Parent_Customer__c"] = parent
    return opp


def test_customers_split_by_identifier_and_currency_by_default(
    example_mappings: Mappings,
) -> None:
    assert example_mappings.customer.split == "identifier_and_currency"
    usd = plan_of(map_opportunity(_team_deal("USD", "001Hs00009TestAAAQ"), example_mappings))
    eur = plan_of(map_opportunity(_team_deal("EUR", "001Hs00009TestAAAQ"), example_mappings))
    assert usd.customer.customer_key == "001Hs00009TestAAAQ/USD"
    assert eur.customer.customer_key == "001Hs00009TestAAAQ/EUR"
    assert usd.customer.account_id == eur.customer.account_id


def test_the_customer_identifier_is_honoured_across_accounts(
    example_mappings: Mappings,
) -> None:
    from sf_bridge.mapping.model import FieldRef

    rules = dataclasses.replace(
        example_mappings.customer,
        identifier=FieldRef("Account", ("Parent_Customer__c",)),
        split="identifier",
    )
    mappings = dataclasses.replace(example_mappings, customer=rules)
    one = plan_of(map_opportunity(_team_deal("USD", "001Hs00009TestAAAQ", "GROUP-7"), mappings))
    two = plan_of(map_opportunity(_team_deal("EUR", "001Hs00009OtherAAQ", "GROUP-7"), mappings))
    assert one.customer.customer_key == two.customer.customer_key == "GROUP-7"
    assert (one.customer.account_id, two.customer.account_id) == (
        "001Hs00009TestAAAQ",
        "001Hs00009OtherAAQ",
    )
    assert "Account.Parent_Customer__c" in mappings.query_fields()[0]


def test_a_very_long_identifier_value_gives_a_key_that_fits() -> None:
    from sf_bridge.plan import customer_key

    key = customer_key("x" * 400, "eur")
    assert len(key) <= 255
    assert key.startswith("sha256:")
    assert key == customer_key("x" * 400, "EUR")
    assert key != customer_key("x" * 400, "usd")


# -- several lines of one plan ---------------------------------------------------------------


@pytest.fixture(scope="module")
def line_level_mappings(tmp_path_factory: pytest.TempPathFactory) -> Mappings:
    """The example mappings with team's API calls, retention and SSO read from each line."""
    folder = tmp_path_factory.mktemp("line-level") / "mappings"
    shutil.copytree(EXAMPLE_MAPPINGS_DIR, folder)
    catalog = folder / "catalog.yaml"
    text = catalog.read_text()
    team = text.index("  team:")
    team_block = text[team : text.index("  enterprise:", team)]
    edited = (
        team_block.replace(
            "api_calls: 100000", "api_calls: {variable: true, default: 100000, max: 300000}"
        )
        .replace("data_retention: 30", "data_retention: {variable: true, default: 30}")
        .replace("sso: false", "sso: {variable: true, default: false}")
    )
    catalog.write_text(text.replace(team_block, edited))
    sources = folder / "salesforce.yaml"
    text = sources.read_text()
    start = text.index("entitlement_sources:")
    end = text.index("\n\n", start)
    sources.write_text(
        text[:start]
        + "entitlement_sources:\n"
        + "  seats: Opportunity.Seats__c\n"
        + "  api_calls: OpportunityLineItem.API_Calls__c\n"
        + "  data_retention: OpportunityLineItem.Retention_Days__c\n"
        + "  sso: OpportunityLineItem.SSO__c\n"
        + text[end:]
    )
    return load_mappings(folder)


def team_line(line_id: str, seats: int, **fields: Any) -> dict[str, Any]:
    line = opportunity_line(line_id, "SB-TEAM-Y", seats, 150)
    line.update(fields)
    return line


def test_lines_of_one_plan_combine_line_level_values_by_the_feature_rule(
    line_level_mappings: Mappings,
) -> None:
    lines = [
        team_line("00kT1", 5, API_Calls__c=100000, Retention_Days__c=365, SSO__c=False),
        team_line("00kT2", 3, API_Calls__c=50000, Retention_Days__c=30, SSO__c=True),
    ]
    plan = plan_of(map_opportunity(make_opportunity(lines), line_level_mappings))
    assert [(i.name, i.quantity) for i in plan.items] == [("team", 8)]
    values = ents(plan)
    assert values["seats"] == 8
    assert values["api_calls"] == 150000  # sum
    assert values["data_retention"] == 365  # max
    assert values["sso"] is True  # any
    api = next(e for e in plan.entitlements if e.feature == "api_calls")
    assert "sum of 2 plan lines (100000 + 50000)" in api.source


def test_one_plan_line_without_the_line_value_is_refused(line_level_mappings: Mappings) -> None:
    lines = [
        team_line("00kT1", 5, API_Calls__c=100000, Retention_Days__c=365, SSO__c=True),
        team_line("00kT2", 3, Retention_Days__c=365, SSO__c=True),
    ]
    error = only_error(
        map_opportunity(make_opportunity(lines), line_level_mappings), "missing_value"
    )
    assert error.where == "line item 00kT2 (product SB-TEAM-Y)"
    assert "is read from each plan line" in error.message
    assert "line item 00kT1 (product SB-TEAM-Y) has one" in error.message
    assert "fill in OpportunityLineItem.API_Calls__c on every line of plan team" in error.hint


def test_combined_line_values_are_checked_against_the_bounds(
    line_level_mappings: Mappings,
) -> None:
    lines = [
        team_line("00kT1", 5, API_Calls__c=200000, Retention_Days__c=30, SSO__c=False),
        team_line("00kT2", 3, API_Calls__c=200000, Retention_Days__c=30, SSO__c=False),
    ]
    error = only_error(
        map_opportunity(make_opportunity(lines), line_level_mappings), "value_out_of_bounds"
    )
    assert "is 400000, but the mapping allows only between 0 and 300000" in error.message


def test_line_level_values_of_a_plan_left_empty_on_every_line_take_the_default(
    line_level_mappings: Mappings,
) -> None:
    lines = [team_line("00kT1", 5), team_line("00kT2", 3)]
    values = ents(plan_of(map_opportunity(make_opportunity(lines), line_level_mappings)))
    assert (values["api_calls"], values["data_retention"], values["sso"]) == (100000, 30, False)

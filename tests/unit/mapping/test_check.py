"""`check_mappings`: every check code, triggered by one edit of the example files."""

from __future__ import annotations

from pathlib import Path

import pytest

from sf_bridge.mapping import MappingFilesInvalid, MappingIssue, check_mappings, load_mappings
from tests.fixtures.mapping import copy_mappings, line_of

CAT = "catalog.yaml"
SF = "salesforce.yaml"

# (code, {file: [(old, new)]}, text the message or hint must contain)
CASES: list[tuple[str, dict[str, list[tuple[str, str]]], str]] = [
    ("yaml_syntax", {CAT: [("    unit: users\n", "    unit: [users\n")]}, "not valid YAML"),
    (
        "unknown_key",
        {SF: [("  identifier: Account.Id", "  identifer: Account.Id")]},
        "did you mean 'identifier'?",
    ),
    (
        "missing_key",
        {CAT: [("    type: seats\n", "")]},
        "feature 'seats' has no 'type'",
    ),
    (
        "wrong_type",
        {CAT: [("      api_calls: 100000\n", "      api_calls: lots\n")]},
        "must be a whole number or true/false, not the text 'lots'",
    ),
    (
        "duplicate_key",
        {
            CAT: [
                ("  scim:\n    type: flag\n", "  scim:\n    type: flag\n  scim:\n    type: flag\n")
            ]
        },
        "'scim' appears twice in 'features'",
    ),
    (
        "duplicate_product_code",
        {
            SF: [
                (
                    "  SB-TEAM-Y: {plan: team, interval: year}\n",
                    "  SB-TEAM-Y: {plan: team}\n  sb-team-y: {plan: team, interval: year}\n",
                )
            ]
        },
        "product 'sb-team-y' is listed twice",
    ),
    (
        "unknown_feature",
        {CAT: [("switches_on: [advanced_analytics]", "switches_on: [advanced_analytic]")]},
        "did you mean 'advanced_analytics'?",
    ),
    (
        "unknown_plan",
        {SF: [("SB-ENT-Y: {plan: enterprise,", "SB-ENT-Y: {plan: enterprize,")]},
        "did you mean 'enterprise'?",
    ),
    (
        "unknown_addon",
        {SF: [("SB-SEATS-M: {addon: extra_seats,", "SB-SEATS-M: {addon: extra_seat,")]},
        "did you mean 'extra_seats'?",
    ),
    (
        "variable_without_source",
        {SF: [("  seats: Opportunity.Seats__c\n", "")]},
        "entitlement 'seats' of plan 'enterprise_custom' is variable but has no source",
    ),
    (
        "negative_value",
        {CAT: [("amount: 15.00}", "amount: -15.00}")]},
        "must not be negative (-15.00)",
    ),
    (
        "not_an_integer",
        {CAT: [("      data_retention: 30\n", "      data_retention: 30.5\n")]},
        "must be a whole number, not 30.5",
    ),
    (
        "value_too_small",
        {CAT: [("      seats: 1\n", "      seats: 0\n")]},
        "must be at least 1, not 0",
    ),
    (
        "invalid_amount",
        {CAT: [("amount: 15.00}", "amount: 15.001}")]},
        "has more decimals than USD allows (2)",
    ),
    (
        "invalid_currency",
        {SF: [("currencies: [USD, EUR]", "currencies: [USD, EUX]")]},
        "did you mean 'EUR'?",
    ),
    (
        "missing_price",
        {
            CAT: [
                (
                    "      - {lookup_key: team_yearly_eur, currency: EUR, interval: year, "
                    "amount: 140.00}\n",
                    "",
                )
            ]
        },
        "plan 'team' has no yearly price in EUR",
    ),
    (
        "duplicate_price",
        {
            CAT: [
                (
                    "team_yearly_eur, currency: EUR, interval: year",
                    "team_yearly_eur, currency: EUR, interval: month",
                )
            ]
        },
        "plan 'team' has two monthly prices in EUR",
    ),
    (
        "duplicate_lookup_key",
        {CAT: [("lookup_key: team_yearly_eur", "lookup_key: team_monthly_eur")]},
        "the lookup_key 'team_monthly_eur' is used twice",
    ),
    (
        "invalid_field_name",
        {SF: [("  status: SF_Bridge_Status__c", "  status: SF Bridge Status")]},
        "'SF Bridge Status', which is not a valid Salesforce field API name",
    ),
    (
        "invalid_source",
        {SF: [("  seats: Opportunity.Seats__c", "  seats: Opportunty.Seats__c")]},
        "did you mean 'Opportunity'?",
    ),
    (
        "invalid_bounds",
        {CAT: [("default: 730, min: 30,", "default: 730, min: 800,")]},
        "the default (730) of entitlement 'data_retention'",
    ),
    (
        "conflicting_settings",
        {
            CAT: [
                (
                    "seats: {variable: true, required: true,",
                    "seats: {variable: true, required: true, default: 5,",
                )
            ]
        },
        "is required and also has a default",
    ),
    (
        "custom_plan_price",
        {CAT: [("    kind: custom\n", "    kind: custom\n    prices: []\n")]},
        "custom plans are not billed in Stripe",
    ),
    (
        "invalid_name",
        {CAT: [("  team:\n    display_name: Team\n", "  Team Plan:\n    display_name: Team\n")]},
        "e.g. 'team_plan'",
    ),
    (
        "invalid_choice",
        {SF: [("price_overrides: negotiated", "price_overrides: negociated")]},
        "did you mean 'negotiated'?",
    ),
    (
        "invalid_choice",
        {SF: [("when_unwon: review", "when_unwon: cancle")]},
        "'when_unwon' is 'cancle'; it must be one of 'review', 'cancel'",
    ),
    (
        "invalid_choice",
        {SF: [("  identifier: Account.Id\n", "  identifier: Account.Id\n  split: by_currency\n")]},
        "the customer 'split' is 'by_currency'; it must be one of 'identifier_and_currency', "
        "'identifier'",
    ),
    (
        "invalid_source",
        {SF: [("  identifier: Account.Id", "  identifier: OpportunityLineItem.Id")]},
        "reads a line item; a deal has many lines but is billed to one customer",
    ),
    (
        "missing_value",
        {CAT: [("    display_name: Team\n", "    display_name:\n")]},
        "the display_name of plan 'team' must be a single value",
    ),
    (
        "invalid_combine",
        {
            CAT: [
                (
                    "    type: flag\n    description: Single sign-on",
                    "    type: flag\n    combine: sum\n    description: Single sign-on",
                )
            ]
        },
        "feature 'sso' is a flag, so its grants cannot 'sum'",
    ),
    (
        "missing_interval",
        {SF: [("SB-ENT-M: {plan: enterprise, interval: month}", "SB-ENT-M: {plan: enterprise}")]},
        "its billing interval is not said",
    ),
]


@pytest.mark.parametrize(("code", "edits", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_check_reports_its_code_with_a_located_message(
    tmp_path: Path, code: str, edits: dict[str, list[tuple[str, str]]], expected: str
) -> None:
    folder = copy_mappings(tmp_path / "m", edits)
    issues = check_mappings(folder)
    matching = [i for i in issues if i.code == code]
    assert matching, f"no {code} among {[str(i) for i in issues]}"
    issue = matching[0]
    assert expected in f"{issue.message} {issue.hint}"
    assert Path(issue.file).parent == folder
    assert issue.line > 0
    assert issue.column > 0
    assert issue.hint, "every issue says how to fix it"
    assert str(issue).startswith(f"{issue.file}:{issue.line}:{issue.column}: [{code}] ")


def test_the_example_mappings_are_clean(example_mappings_dir: Path) -> None:
    assert check_mappings(example_mappings_dir) == []


def test_how_grants_combine_is_declared_per_feature_with_defaults_per_type(
    example_mappings_dir: Path,
) -> None:
    features = load_mappings(example_mappings_dir).features
    rules = {name: f.combine_rule for name, f in features.items()}
    assert rules["data_retention"] == "max"  # declared: the longest retention applies
    assert (rules["seats"], rules["api_calls"], rules["sso"]) == ("sum", "sum", "any")


def test_a_bad_combine_rule_names_the_line_and_the_fix(tmp_path: Path) -> None:
    unknown = copy_mappings(tmp_path / "a", {CAT: [("    combine: max ", "    combine: maximum ")]})
    [issue] = check_mappings(unknown)
    assert (issue.code, issue.line) == ("invalid_choice", line_of(unknown / CAT, "maximum"))
    assert "'combine' of feature 'data_retention' is 'maximum'" in issue.message
    assert issue.hint == "did you mean 'max'?"

    on_a_number = copy_mappings(tmp_path / "b", {CAT: [("    combine: max ", "    combine: any ")]})
    [issue] = check_mappings(on_a_number)
    assert (issue.code, issue.line) == ("invalid_combine", line_of(on_a_number / CAT, "any "))
    assert "'combine: sum'" in issue.hint
    assert "'combine: max'" in issue.hint


def test_misspelled_plan_names_the_exact_line_and_column(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m", {SF: [("SB-ENT-Y: {plan: enterprise,", "SB-ENT-Y: {plan: enterprize,")]}
    )
    [issue] = check_mappings(folder)
    line = line_of(folder / SF, "enterprize")
    column = (folder / SF).read_text().splitlines()[line - 1].index("enterprize") + 1
    assert str(issue) == (
        f"{folder / SF}:{line}:{column}: [unknown_plan] product 'SB-ENT-Y' names the plan "
        "'enterprize', which is not in 'plans'. Fix: did you mean 'enterprise'?"
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {
            CAT: [("amount: 15.00}", "amount: -15.00}")],
            SF: [
                ("SB-ENT-Y: {plan: enterprise,", "SB-ENT-Y: {plan: enterprize,"),
                ("  status: SF_Bridge_Status__c", "  status: SF Bridge Status"),
                ("price_overrides: negotiated", "price_overrides: negociated"),
            ],
        },
    )
    codes = {i.code for i in check_mappings(folder)}
    assert {"negative_value", "unknown_plan", "invalid_field_name", "invalid_choice"} <= codes


def test_exact_duplicate_product_keys_are_reported(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {
            SF: [
                (
                    "  SB-TEAM-Y: {plan: team, interval: year}\n",
                    "  SB-TEAM-Y: {plan: team, interval: year}\n"
                    "  SB-TEAM-Y: {plan: enterprise, interval: year}\n",
                )
            ]
        },
    )
    [issue] = check_mappings(folder)
    assert issue.code == "duplicate_product_code"
    assert "'SB-TEAM-Y' appears twice" in issue.message


def test_feature_of_the_wrong_type_is_reported(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {CAT: [("      environments: 1\n    sold_with", "      sso: 1\n    sold_with")]},
    )
    issues = check_mappings(folder)
    assert [i.code for i in issues] == ["wrong_type"]
    assert "uses the feature 'sso' as limit or seats, but it is a flag" in issues[0].message


def test_a_section_in_two_files_is_reported(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path / "m")
    (folder / "zz-extra.yaml").write_text("# more\nwon_stages: [Won]\n")
    [issue] = check_mappings(folder)
    assert issue.code == "duplicate_section"
    assert (issue.file, issue.line, issue.column) == (str(folder / "zz-extra.yaml"), 2, 1)
    assert f"already defined in {folder / SF}:" in issue.message


def test_missing_sections_are_reported_for_the_folder(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path / "m")
    (folder / SF).unlink()
    issues = [i for i in check_mappings(folder) if i.code == "missing_section"]
    assert {i.line for i in issues} == {0}
    assert {i.message for i in issues} == {
        "no mapping file has a 'currencies' section.",
        "no mapping file has a 'products' section.",
    }
    assert str(issues[0]).startswith(f"{folder}: [missing_section]")


@pytest.mark.parametrize("kind", ["empty", "absent"])
def test_no_mapping_files(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "nothing"
    if kind == "empty":
        folder.mkdir()
    [issue] = check_mappings(folder)
    assert issue.code == "no_mapping_files"
    assert ("has no .yaml files" if kind == "empty" else "does not exist") in issue.message
    assert "SF_BRIDGE_MAPPINGS" in issue.hint


def test_load_raises_with_every_issue(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {
            SF: [
                ("SB-ENT-Y: {plan: enterprise,", "SB-ENT-Y: {plan: enterprize,"),
                ("price_overrides: negotiated", "price_overrides: negociated"),
            ]
        },
    )
    with pytest.raises(MappingFilesInvalid) as raised:
        load_mappings(folder)
    assert [i.code for i in raised.value.issues] == ["unknown_plan", "invalid_choice"]
    assert "2 problems" in raised.value.user_message()
    assert "sf-bridge mappings check" in raised.value.user_message()


def test_issue_string_without_position() -> None:
    issue = MappingIssue("mappings", 0, 0, "no_mapping_files", "nothing here.", "add files.")
    assert str(issue) == "mappings: [no_mapping_files] nothing here. Fix: add files."


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path / "m")
    (folder / "notes.yaml").write_bytes(b"# caf\xe9\n")
    [issue] = check_mappings(folder)
    assert (issue.code, issue.file) == ("yaml_syntax", str(folder / "notes.yaml"))
    assert "not UTF-8" in issue.message


def test_an_empty_file_is_fine_and_a_list_at_the_top_is_not(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path / "m")
    (folder / "empty.yaml").write_text("# nothing yet\n")
    assert check_mappings(folder) == []
    (folder / "list.yaml").write_text("- plans\n")
    [issue] = check_mappings(folder)
    assert issue.code == "wrong_type"
    assert "must be a set of 'key: value' lines, not a list" in issue.message


def test_an_unreadable_price_is_reported_once_not_also_as_missing(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {CAT: [("team_yearly_eur, currency: EUR, interval: year",
                "team_yearly_eur, currency: EUX, interval: year")]},
    )  # fmt: skip
    assert [i.code for i in check_mappings(folder)] == ["invalid_currency"]


def test_prices_that_are_not_a_list(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {CAT: [("    prices:\n      - {lookup_key: team_monthly_usd",
                "    prices: 15\n    old_prices:\n      - {lookup_key: team_monthly_usd")]},
    )  # fmt: skip
    codes = [i.code for i in check_mappings(folder)]
    assert sorted(codes) == ["unknown_key", "wrong_type"]


def test_a_broken_definition_is_reported_once_not_at_every_reference(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {
            CAT: [
                ("  seats:\n    type: seats\n", "  seats:\n    type: seat\n"),
                (
                    "    display_name: Extra seats\n",
                    "    display_name: Extra seats\n    colour: x\n",
                ),
            ]
        },
    )
    issues = check_mappings(folder)
    assert [i.code for i in issues] == ["invalid_choice", "unknown_key"], [str(i) for i in issues]
    assert "did you mean 'seats'?" in issues[0].hint


def test_an_empty_currency_list(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path / "m", {SF: [("currencies: [USD, EUR]", "currencies: []")]})
    [issue] = check_mappings(folder)
    assert (issue.code, issue.message) == ("missing_value", "'currencies' is empty.")


def test_product_ids_must_be_salesforce_ids(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m", {SF: [("products:\n", "match_products_by: product_id\nproducts:\n")]}
    )
    issues = check_mappings(folder)
    assert {i.code for i in issues} == {"invalid_product_id"}
    assert len(issues) == 11
    assert "product 'SB-TEAM-M' is not a Salesforce Product2 Id" in issues[0].message


def test_the_customer_split_is_read(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {
            SF: [
                (
                    "  identifier: Account.Id\n",
                    "  identifier: Account.Group__c\n  split: identifier\n",
                )
            ]
        },
    )
    assert check_mappings(folder) == []
    customer = load_mappings(folder).customer
    assert (str(customer.identifier), customer.split) == ("Account.Group__c", "identifier")


def test_a_file_too_large_to_be_a_mapping_is_refused_unread(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path / "m")
    big = folder / "export.yaml"
    big.write_bytes(b"# " + b"x" * 2_000_000 + b"\n")
    [issue] = check_mappings(folder)
    assert (issue.code, issue.file) == ("file_too_large", str(big))
    assert "2,000,003 bytes" in issue.message
    assert "at most 1 MB" in issue.message
    assert "move this file out of the mappings folder" in issue.hint

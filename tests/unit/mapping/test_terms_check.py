"""`mappings check` on the deal_type, amendments, contract and discount sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from sf_bridge.mapping import check_mappings, load_mappings
from sf_bridge.mapping.model import FieldRef
from tests.fixtures.mapping import copy_mappings, line_of

SF = "salesforce.yaml"
Edits = dict[str, list[tuple[str, str]]]

CASES: list[tuple[str, str, str, str]] = [
    # (code, old text, new text, text of the message or hint)
    ("invalid_choice", "    Renewal: renewal", "    Renewal: renew", "did you mean 'renewal'?"),
    ("invalid_choice", "  lines: additions", "  lines: addition", "did you mean 'additions'?"),
    (
        "invalid_choice",
        "  proration: create_prorations",
        "  proration: prorate",
        "'create_prorations', 'always_invoice', 'none'",
    ),
    ("invalid_choice", "  past_start: start_now", "  past_start: later", "'backdate'"),
    (
        "invalid_source",
        "  line_start_date: OpportunityLineItem.ServiceDate",
        "  line_start_date: Opportunity.CloseDate",
        "must be a field of OpportunityLineItem",
    ),
    (
        "invalid_source",
        "  field: Opportunity.Type",
        "  field: OpportunityLineItem.Type",
        "must be a field of Opportunity",
    ),
    (
        "value_too_small",
        "  term_months: Opportunity.Contract_Term_Months__c",
        "  term_months: 0",
        "at least 1",
    ),
    (
        "not_an_integer",
        "  term_months: Opportunity.Contract_Term_Months__c",
        "  term_months: 12.5",
        "whole number",
    ),
    (
        "value_too_large",
        "  term_months: Opportunity.Contract_Term_Months__c",
        "  term_months: 5000",
        "at most 1200",
    ),
    (
        "value_out_of_range",
        "  percent: Opportunity.Deal_Discount_Percent__c",
        "  percent: 150",
        "at most 100",
    ),
    (
        "conflicting_settings",
        "  amount: Opportunity.Deal_Discount_Amount__c",
        "  amount: 100",
        "a deal gets one discount",
    ),
    (
        "missing_key",
        "  months: Opportunity.Deal_Discount_Months__c\n",
        "",
        "has no 'months'",
    ),
    (
        "invalid_choice",
        "      Whole contract: forever",
        "      Whole contract: always",
        "'once', 'repeating', 'forever'",
    ),
    ("unknown_key", "  past_start: start_now", "  past_starts: start_now", "past_start"),
]


@pytest.mark.parametrize(("code", "old", "new", "expected"), CASES)
def test_each_mistake_is_reported_with_its_line_and_a_fix(
    tmp_path: Path, code: str, old: str, new: str, expected: str
) -> None:
    folder = copy_mappings(tmp_path / "m", {SF: [(old, new)]})
    issues = [i for i in check_mappings(folder) if i.code == code]
    assert issues, f"no {code}"
    issue = issues[0]
    assert expected in f"{issue.message} {issue.hint}"
    assert issue.hint
    assert Path(issue.file).name == SF
    assert issue.line > 0


def test_months_without_a_repeating_duration_conflict(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path / "m", {SF: [("      Several months: repeating\n", "")]})
    issues = check_mappings(folder)
    assert [i.code for i in issues] == ["conflicting_settings"]
    assert issues[0].line == line_of(folder / SF, "  months: Opportunity.Deal_Discount_Months__c")


def test_the_fetch_selects_the_fields_the_terms_name(example_mappings_dir: Path) -> None:
    mappings = load_mappings(example_mappings_dir)
    opportunity, lines = mappings.query_fields()
    for name in (
        "Type",
        "Contract_Start_Date__c",
        "Contract_Term_Months__c",
        "Deal_Discount_Percent__c",
        "Deal_Discount_Amount__c",
        "Deal_Discount_Duration__c",
        "Deal_Discount_Months__c",
    ):
        assert name in opportunity
    assert "ServiceDate" in lines
    assert FieldRef("OpportunityLineItem", ("ServiceDate",)) in mappings.referenced_fields()


def test_without_the_sections_nothing_more_is_selected(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path / "m")
    text = (folder / SF).read_text()
    (folder / SF).write_text(text[: text.index("\n# What the deal does to the account")] + "\n")
    mappings = load_mappings(folder)
    assert mappings.terms is None
    opportunity, lines = mappings.query_fields()
    assert "Type" not in opportunity
    assert "Contract_Start_Date__c" not in opportunity
    assert "ServiceDate" not in lines

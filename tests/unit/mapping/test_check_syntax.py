"""`check_mappings` after a YAML syntax error, and every problem of valid files in one run.

A file that does not parse is reported first, alone (the checks across files would only
report what is missing because of it), in plain words, at the line to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from sf_bridge.mapping import check_mappings
from tests.fixtures.mapping import copy_mappings, line_of

CAT = "catalog.yaml"
SF = "salesforce.yaml"

# (mistake, file, (old, new), text on the line to change, words the message must contain)
MISTAKES = [
    (
        "indented one space too few",
        CAT,
        ("    unit: users\n", "   unit: users\n"),
        "   unit: users",
        "indentation (3 spaces) does not match",
    ),
    (
        "indented more than the line above",
        CAT,
        ("    unit: users\n", "      unit: users\n"),
        "      unit: users",
        "indented more than line",
    ),
    (
        "a key without its colon",
        CAT,
        ("    unit: users\n", "    unit users\n"),
        "    unit users",
        "no ':' after its key",
    ),
    (
        "a section name without its colon",
        SF,
        ("won_stages: [Closed Won]\n", "won_stages [Closed Won]\n"),
        "won_stages [Closed Won]",
        "no ':' after its key",
    ),
    (
        "a tab for indentation",
        CAT,
        ("    unit: users\n", "\tunit: users\n"),
        "\tunit: users",
        "tab character",
    ),
    (
        "an unclosed quote",
        CAT,
        ("    unit: users\n", '    unit: "users\n'),
        '    unit: "users',
        'the quote (") that starts here is never closed',
    ),
    (
        "an unclosed list",
        SF,
        ("currencies: [USD, EUR]", "currencies: [USD, EUR"),
        "currencies: [USD, EUR",
        "'[' on this line is not closed with ']'",
    ),
    (
        "a colon inside a value",
        CAT,
        ("    description: People who can sign in.", "    description: Seats: people who sign in."),
        "Seats: people who sign in.",
        "contains ': '",
    ),
]


@pytest.mark.parametrize(
    ("file", "edit", "bad_line", "words"),
    [m[1:] for m in MISTAKES],
    ids=[m[0] for m in MISTAKES],
)
def test_a_syntax_error_is_reported_alone_in_plain_words_at_the_line_to_change(
    tmp_path: Path, file: str, edit: tuple[str, str], bad_line: str, words: str
) -> None:
    folder = copy_mappings(tmp_path / "m", {file: [edit]})
    issues = check_mappings(folder)
    assert [i.code for i in issues] == ["yaml_syntax"], [str(i) for i in issues]
    [issue] = issues
    assert issue.file == str(folder / file)
    assert issue.line == line_of(folder / file, bad_line), str(issue)
    assert words in issue.message, str(issue)
    for jargon in ("<block", "expected", "scanning", "token", "stream"):
        assert jargon not in f"{issue.message} {issue.hint}", str(issue)
    assert issue.hint


def test_a_syntax_error_comes_first_and_the_other_files_problems_follow(tmp_path: Path) -> None:
    """The catalog's own problem is still reported; nothing that only follows from the
    unreadable file is (no missing sections, no unknown plans or add-ons)."""
    folder = copy_mappings(
        tmp_path / "m",
        {
            CAT: [("amount: 15.00}", "amount: -15.00}")],
            SF: [("currencies: [USD, EUR]", "currencies: [USD, EUR")],
        },
    )
    issues = check_mappings(folder)
    assert [(i.code, Path(i.file).name) for i in issues] == [
        ("yaml_syntax", SF),
        ("negative_value", CAT),
    ], [str(i) for i in issues]


def test_a_misspelt_sold_with_does_not_hide_a_missing_price(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {
            CAT: [
                (
                    "    sold_with: [enterprise, enterprise_custom]\n",
                    "    sold_wth: [enterprise]\n",
                ),
                (
                    "      - {lookup_key: extra_seat_yearly_eur, currency: EUR, interval: year, "
                    "amount: 180.00}\n",
                    "",
                ),
            ]
        },
    )
    issues = check_mappings(folder)
    assert sorted(i.code for i in issues) == ["missing_key", "missing_price", "unknown_key"]
    [missing] = [i for i in issues if i.code == "missing_price"]
    assert "add-on 'extra_seats' has no yearly price in EUR" in missing.message


def test_a_misspelt_plan_kind_does_not_hide_its_price_errors(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {
            CAT: [
                ("    kind: paid\n    priced_per: seats", "    kind: payd\n    priced_per: seats"),
                ("amount: 15.00}", "amount: 15.001}"),
            ]
        },
    )
    codes = sorted(i.code for i in check_mappings(folder))
    assert codes == ["invalid_amount", "invalid_choice"]


def test_a_price_missing_a_key_still_has_its_other_errors_reported(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {
            CAT: [
                (
                    "{lookup_key: team_monthly_usd, currency: USD, interval: month, amount: 15.00}",
                    "{currency: USD, interval: month, amount: 15.001}",
                )
            ]
        },
    )
    issues = check_mappings(folder)
    assert sorted(i.code for i in issues) == ["invalid_amount", "missing_key"], [
        str(i) for i in issues
    ]

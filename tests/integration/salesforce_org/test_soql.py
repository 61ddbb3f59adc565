"""The SOQL subset of the sandbox org, evaluated in process (no HTTP)."""

from __future__ import annotations

import pytest

from sf_bridge.sandbox.salesforce_org.core import Org
from sf_bridge.sandbox.salesforce_org.ids import IdFactory, checksum_suffix, is_valid_id, to_18
from sf_bridge.sandbox.salesforce_org.soql import SoqlError


@pytest.fixture
def org() -> Org:
    org = Org()
    org.create_product("PLAN", "Plan", unit_price=10)
    for name, stage, amount in [
        ("Alpha", "Closed Won", 100.0),
        ("beta", "Prospecting", None),
        ("Gamma", "Closed Lost", 50.0),
        ("O'Brien", "Negotiation/Review", 75.0),
    ]:
        account = org.create_account(f"{name} account")
        fields = {"Amount": amount} if amount is not None else {}
        org.create_opportunity(account, name, [], stage=stage, **fields)
    return org


def names(org: Org, soql: str) -> list[str]:
    return [r["Name"] for r in org.queries.run(soql)[1]]


def test_boolean_logic_and_parentheses(org: Org) -> None:
    assert names(org, "SELECT Name FROM Opportunity WHERE IsWon = true OR IsClosed = false") == [
        "Alpha",
        "beta",
        "O'Brien",
    ]
    assert names(
        org, "SELECT Name FROM Opportunity WHERE NOT (IsClosed = true AND IsWon = false)"
    ) == ["Alpha", "beta", "O'Brien"]
    assert names(org, "SELECT Name FROM Opportunity WHERE StageName NOT IN ('Closed Won')") == [
        "beta",
        "Gamma",
        "O'Brien",
    ]


def test_strings_compare_case_insensitively_and_like_uses_wildcards(org: Org) -> None:
    assert names(org, "SELECT Name FROM Opportunity WHERE Name = 'ALPHA'") == ["Alpha"]
    assert names(org, "SELECT Name FROM Opportunity WHERE Name LIKE '%a'") == [
        "Alpha",
        "beta",
        "Gamma",
    ]
    assert names(org, "SELECT Name FROM Opportunity WHERE Name LIKE 'O\\'B_ien'") == ["O'Brien"]
    assert names(org, "SELECT Name FROM Opportunity WHERE Account.Name LIKE 'gam%'") == ["Gamma"]


def test_nulls_numbers_and_ordering(org: Org) -> None:
    assert names(org, "SELECT Name FROM Opportunity WHERE Amount = null") == []
    assert names(org, "SELECT Name FROM Opportunity WHERE Amount >= 75") == ["Alpha", "O'Brien"]
    assert names(org, "SELECT Name FROM Opportunity ORDER BY Name") == [
        "Alpha",
        "beta",
        "Gamma",
        "O'Brien",
    ]
    assert names(org, "SELECT Name FROM Opportunity ORDER BY Amount DESC, Name ASC LIMIT 2") == [
        "Alpha",
        "O'Brien",
    ]
    assert names(org, "SELECT Name FROM Opportunity ORDER BY Name LIMIT 2 OFFSET 1") == [
        "beta",
        "Gamma",
    ]


def test_date_functions_and_datetime_literals(org: Org) -> None:
    assert len(names(org, "SELECT Name FROM Opportunity WHERE CreatedDate = TODAY")) == 4
    assert names(org, "SELECT Name FROM Opportunity WHERE CreatedDate < LAST_N_DAYS:3") == []
    assert names(org, "SELECT Name FROM Opportunity WHERE CloseDate < 2000-01-01") == []
    assert (
        len(
            names(
                org, "SELECT Name FROM Opportunity WHERE CreatedDate > 2000-01-01T00:00:00.000+0100"
            )
        )
        == 4
    )


def test_count_and_relationship_filters(org: Org) -> None:
    total, records = org.queries.run("SELECT COUNT() FROM Opportunity WHERE IsClosed = true")
    assert (total, records) == (2, [])
    total, records = org.queries.run(
        "SELECT Id, Account.Name FROM Opportunity WHERE Account.Name = 'beta account'"
    )
    assert total == 1
    assert records[0]["Account"]["Name"] == "beta account"


def test_duplicate_field_and_bad_literals_are_refused(org: Org) -> None:
    with pytest.raises(SoqlError) as duplicate:
        org.queries.run("SELECT Id, id FROM Opportunity")
    assert duplicate.value.error_code == "DUPLICATE_FIELD"
    with pytest.raises(SoqlError) as quoted_number:
        org.queries.run("SELECT Id FROM Opportunity WHERE Amount > '5'")
    assert "must be of type currency" in quoted_number.value.message
    with pytest.raises(SoqlError) as unquoted:
        org.queries.run("SELECT Id FROM Opportunity WHERE Name = 5")
    assert "should be enclosed in quotes" in unquoted.value.message
    with pytest.raises(SoqlError) as like_number:
        org.queries.run("SELECT Id FROM Opportunity WHERE Amount LIKE '5%'")
    assert like_number.value.error_code == "INVALID_QUERY_FILTER_OPERATOR"


def test_pinned_ids_ignore_unknown_ids_and_still_apply_other_filters(org: Org) -> None:
    won = names(org, "SELECT Name FROM Opportunity WHERE IsWon = true")
    alpha_id = org.queries.run("SELECT Id FROM Opportunity WHERE Name = 'Alpha'")[1][0]["Id"]
    beta_id = org.queries.run("SELECT Id FROM Opportunity WHERE Name = 'beta'")[1][0]["Id"]
    soql = (
        f"SELECT Name FROM Opportunity WHERE Id IN ('{alpha_id}', '{beta_id[:15]}', "
        "'006000000000000AAA') AND IsWon = true"
    )
    assert names(org, soql) == won == ["Alpha"]


def test_line_items_follow_updates_and_roll_up_the_amount() -> None:
    org = Org()
    org.create_product("PLAN", "Plan", unit_price=10)
    account = org.create_account("Acme")
    opportunity = org.create_opportunity(account, "Deal", [{"product_code": "PLAN", "quantity": 3}])
    [line] = org.store.children("OpportunityLineItem", "OpportunityId", opportunity)
    org.store.update("OpportunityLineItem", line["Id"], {"Quantity": 5}, as_api=True)
    assert org.get_opportunity(opportunity)["Amount"] == 50.0


def test_ids_have_salesforce_checksums() -> None:
    assert checksum_suffix("a0D30000001n7Pi") == "EAI"
    assert to_18("a0D30000001n7Pi") == "a0D30000001n7PiEAI"
    assert is_valid_id("a0D30000001n7PiEAI")
    assert not is_valid_id("a0D30000001n7PiAAA")
    assert not is_valid_id("006' OR Name != '")
    factory = IdFactory()
    first, second = factory.new_id("Opportunity"), factory.new_id("Opportunity")
    assert first.startswith("006")
    assert len(first) == 18
    assert first < second
    assert is_valid_id(first)


def test_an_org_specific_won_stage_sets_is_won() -> None:
    org = Org()
    org.add_stage("Signed", probability=100, closed=True, won=True, forecast="Closed")
    account = org.create_account("Acme")
    opportunity = org.create_opportunity(account, "Deal", [])
    org.close_won(opportunity, StageName="Signed")
    stored = org.get_opportunity(opportunity)
    assert (stored["StageName"], stored["IsWon"], stored["IsClosed"]) == ("Signed", True, True)
    [event] = [
        e.message["data"]["payload"]
        for e in org.events.retained()
        if e.message["data"]["payload"]["ChangeEventHeader"]["changeType"] == "UPDATE"
    ]
    assert event["StageName"] == "Signed"
    assert event["IsWon"] is True


def test_push_topic_events_are_kept_24_hours_and_change_events_72() -> None:
    from sf_bridge.sandbox.salesforce_org.events import ReplayIdRefused

    org = Org()
    topic = org.define_push_topic("Won", "SELECT Id, StageName FROM Opportunity WHERE IsWon = true")
    account = org.create_account("Acme")
    opportunity = org.create_opportunity(account, "Deal", [])
    org.close_won(opportunity)
    first_topic_event = org.events.retained(topic)[0].replay_id
    org.advance_clock(25 * 3600)

    assert org.events.retained(topic) == []
    assert len(org.events.retained("/data/OpportunityChangeEvent")) == 2
    with pytest.raises(ReplayIdRefused):
        org.events.events_after(topic, first_topic_event)
    org.events.events_after("/data/OpportunityChangeEvent", first_topic_event)  # still valid

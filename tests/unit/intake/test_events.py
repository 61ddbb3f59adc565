from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sf_bridge.crm.soql import to_18
from sf_bridge.intake.events import EventRules, channel_kind, normalise

OPP_A = "0068d00000AbCdEAAV"
OPP_B = "0068d00000XyZwVAAV"
RULES = EventRules(won_stages=frozenset({"Closed Won", "Won - Renewal"}))


def cdc(change_type: str, ids: Any, changed: Any = None, replay_id: Any = 11, **values: Any):
    return {
        "channel": "/data/OpportunityChangeEvent",
        "data": {
            "schema": "x",
            "payload": {
                "ChangeEventHeader": {
                    "entityName": "Opportunity",
                    "recordIds": ids,
                    "changeType": change_type,
                    "changedFields": changed if changed is not None else [],
                    "commitTimestamp": 1764086400000,
                },
                **values,
            },
            "event": {"replayId": replay_id},
        },
    }


def test_channel_kinds():
    assert channel_kind("/data/OpportunityChangeEvent") == "cdc"
    assert channel_kind("/event/Deal_Won__e") == "platform_event"
    assert channel_kind("/topic/WonDeals") == "push_topic"


def test_cdc_update_to_a_won_stage_names_every_record():
    out = normalise(
        cdc("UPDATE", [OPP_A, OPP_B], ["StageName", "LastModifiedDate"], StageName="Closed Won"),
        "cdc",
        RULES,
    )
    assert out.won == (OPP_A, OPP_B)
    assert out.recheck == ()
    assert out.malformed is None
    assert out.replay_id == 11
    assert out.created == "1764086400000"


def test_cdc_update_uses_the_mapping_won_stages_as_a_fast_path():
    message = cdc("UPDATE", [OPP_A], ["StageName"], StageName="Won - Renewal")
    assert normalise(message, "cdc", RULES).won == (OPP_A,)
    # A stage the mapping does not list, without IsWon: re-read by id, not dropped.
    other = normalise(message, "cdc", EventRules())
    assert other.won == ()
    assert other.recheck == (OPP_A,)


def test_a_stage_nobody_listed_is_judged_by_is_won_when_it_comes_along():
    won = cdc(
        "UPDATE",
        [OPP_A],
        ["StageName", "IsWon"],
        StageName="Closed Won - Expansion",
        IsWon=True,
    )
    assert normalise(won, "cdc", RULES).won == (OPP_A,)
    lost = cdc("UPDATE", [OPP_A], ["StageName", "IsWon"], StageName="Closed Won", IsWon=False)
    assert normalise(lost, "cdc", RULES).ids == ()


def test_cdc_update_to_an_open_stage_without_is_won_is_rechecked():
    out = normalise(cdc("UPDATE", [OPP_A], ["StageName"], StageName="Qualification"), "cdc", RULES)
    assert out.recheck == (OPP_A,)
    assert out.won == ()


def without_changed_fields(message: dict[str, Any]) -> dict[str, Any]:
    del message["data"]["payload"]["ChangeEventHeader"]["changedFields"]
    return message


def test_cdc_header_without_changed_fields_is_judged_by_the_fields_it_carries():
    is_won = without_changed_fields(cdc("UPDATE", [OPP_A], IsWon=True, LastModifiedDate="x"))
    assert normalise(is_won, "cdc", RULES).won == (OPP_A,)
    stage = without_changed_fields(cdc("UPDATE", [OPP_B], StageName="Closed Won"))
    assert normalise(stage, "cdc", RULES).won == (OPP_B,)
    unknown = without_changed_fields(cdc("UPDATE", [OPP_A], StageName="Closed Won - Expansion"))
    assert normalise(unknown, "cdc", RULES).recheck == (OPP_A,)
    lost = without_changed_fields(cdc("UPDATE", [OPP_A], StageName="Closed Lost", IsWon=False))
    assert normalise(lost, "cdc", RULES).ids == ()
    other = without_changed_fields(cdc("UPDATE", [OPP_A], Description="notes"))
    out = normalise(other, "cdc", RULES)
    assert out.ids == ()
    assert out.malformed is None


def test_cdc_update_that_does_not_touch_the_stage_is_ignored():
    out = normalise(cdc("UPDATE", [OPP_A], ["Amount"], Amount=5), "cdc", RULES)
    assert out.ids == ()
    assert not out.sweep
    assert out.malformed is None


def test_cdc_update_to_a_lost_stage_is_ignored_when_is_won_says_so():
    lost = cdc("UPDATE", [OPP_A], ["StageName", "IsWon"], StageName="Closed Lost", IsWon=False)
    assert normalise(lost, "cdc", RULES).ids == ()
    # Without IsWon, only the org knows whether that stage is won: re-read, never dropped.
    bare = cdc("UPDATE", [OPP_A], ["StageName"], StageName="Closed Lost")
    assert normalise(bare, "cdc", RULES).recheck == (OPP_A,)


def test_cdc_is_won_flag_counts():
    out = normalise(cdc("UPDATE", [OPP_A], ["IsWon"], IsWon=True), "cdc", RULES)
    assert out.won == (OPP_A,)


def test_cdc_create_directly_won():
    out = normalise(cdc("CREATE", [OPP_A], StageName="Closed Won"), "cdc", RULES)
    assert out.won == (OPP_A,)


def test_cdc_stage_changed_without_value_is_rechecked():
    out = normalise(cdc("UPDATE", [OPP_A], ["StageName"]), "cdc", RULES)
    assert out.recheck == (OPP_A,)


def test_gap_events_are_rechecked_and_overflow_asks_for_a_sweep():
    assert normalise(cdc("GAP_UPDATE", [OPP_A, OPP_B]), "cdc", RULES).recheck == (OPP_A, OPP_B)
    overflow = normalise(cdc("GAP_OVERFLOW", []), "cdc", RULES)
    assert overflow.sweep
    assert overflow.ids == ()
    assert normalise(cdc("DELETE", [OPP_A]), "cdc", RULES).ids == ()
    assert normalise(cdc("GAP_DELETE", [OPP_A]), "cdc", RULES).ids == ()


def test_other_entities_are_ignored():
    message = cdc("UPDATE", [OPP_A], ["StageName"], StageName="Closed Won")
    message["data"]["payload"]["ChangeEventHeader"]["entityName"] = "Account"
    assert normalise(message, "cdc", RULES).ids == ()


def test_fifteen_character_ids_become_eighteen():
    out = normalise(
        cdc("UPDATE", [OPP_A[:15], OPP_A], ["StageName"], StageName="Closed Won"), "cdc", RULES
    )
    assert out.won == (to_18(OPP_A[:15]),)


def test_malformed_cdc_events_are_reported_not_raised():
    cases = [
        {"channel": "/data/OpportunityChangeEvent"},
        {"channel": "x", "data": "nope"},
        {"channel": "x", "data": {"payload": {"no": "header"}, "event": {"replayId": 3}}},
        cdc("UPDATE", "not-a-list", ["StageName"], StageName="Closed Won"),
        cdc("UPDATE", [], ["StageName"], StageName="Closed Won"),
        cdc(None, [OPP_A]),  # type: ignore[arg-type]
        "a string",
        None,
    ]
    for message in cases:
        out = normalise(message, "cdc", RULES)
        assert out.malformed, message
        assert out.sweep, message
        assert out.ids == ()


def test_bad_ids_are_skipped_and_the_good_ones_kept():
    out = normalise(
        cdc("UPDATE", [OPP_A, "'; DELETE", 42], ["StageName"], StageName="Closed Won"), "cdc", RULES
    )
    assert out.won == (OPP_A,)
    assert out.malformed
    assert out.sweep
    assert len(out.rejected_ids) == 2


def test_missing_or_wrongly_typed_replay_id_is_reported():
    out = normalise(
        cdc("UPDATE", [OPP_A], ["StageName"], replay_id="12", StageName="Closed Won"), "cdc", RULES
    )
    assert out.won == (OPP_A,)
    assert out.replay_id is None
    assert out.malformed == "event without a replay id"


def pe(fields: dict[str, Any], replay_id: Any = 5):
    return {
        "channel": "/event/Deal_Won__e",
        "data": {
            "payload": {"CreatedDate": "2026-11-25T16:00:00.000Z", **fields},
            "event": {"replayId": replay_id},
        },
    }


def test_platform_event_names_its_opportunity():
    out = normalise(pe({"OpportunityId__c": OPP_A}), "platform_event", RULES)
    assert out.won == (OPP_A,)
    assert out.created == "2026-11-25T16:00:00.000Z"
    custom = EventRules(id_fields=("Deal__c",))
    assert normalise(pe({"Deal__c": OPP_B}), "platform_event", custom).won == (OPP_B,)


def test_platform_event_problems():
    missing = normalise(pe({"Other__c": OPP_A}), "platform_event", RULES)
    assert missing.malformed
    assert missing.sweep
    bad = normalise(pe({"OpportunityId__c": "not an id"}), "platform_event", RULES)
    assert bad.malformed
    assert bad.ids == ()
    wrong_type = normalise(pe({"OpportunityId__c": ["x"]}), "platform_event", RULES)
    assert wrong_type.malformed
    lost = normalise(pe({"OpportunityId__c": OPP_A, "IsWon": False}), "platform_event", RULES)
    assert lost.ids == ()
    unknown = normalise(
        pe({"OpportunityId__c": OPP_A, "StageName": "Lost"}), "platform_event", RULES
    )
    assert unknown.recheck == (OPP_A,)
    assert unknown.won == ()


def topic(sobject: Any, event_type: str = "updated"):
    return {
        "channel": "/topic/WonDeals",
        "data": {
            "event": {"createdDate": "2026-11-25T16:00:00.000Z", "type": event_type, "replayId": 9},
            "sobject": sobject,
        },
    }


def test_push_topic_events():
    assert normalise(topic({"Id": OPP_A, "IsWon": True}), "push_topic", RULES).won == (OPP_A,)
    assert normalise(topic({"Id": OPP_A, "StageName": "Closed Won"}), "push_topic", RULES).won == (
        OPP_A,
    )
    assert normalise(topic({"Id": OPP_A, "IsWon": False}), "push_topic", RULES).ids == ()
    assert normalise(topic({"Id": OPP_A}), "push_topic", RULES).recheck == (OPP_A,)
    expansion = topic({"Id": OPP_A, "StageName": "Closed Won - Expansion"})
    assert normalise(expansion, "push_topic", RULES).recheck == (OPP_A,)
    assert normalise(topic({"Id": OPP_A, "IsWon": True}, "deleted"), "push_topic", RULES).ids == ()
    bad = normalise(topic({"Id": 17}), "push_topic", RULES)
    assert bad.malformed
    assert bad.sweep
    assert normalise(topic(None), "push_topic", RULES).malformed


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    data=st.dictionaries(
        st.sampled_from(["payload", "event", "sobject", "schema"]), json_values, max_size=4
    ),
    kind=st.sampled_from(["cdc", "platform_event", "push_topic"]),
)
def test_no_message_shape_makes_normalise_raise(data: dict[str, Any], kind: Any):
    out = normalise({"channel": "/x", "data": data}, kind, RULES)
    for opportunity_id in out.ids:
        assert len(opportunity_id) == 18


def test_line_items_added_later_ask_for_a_refresh_not_a_won_verdict():
    lines = cdc("UPDATE", [OPP_A], ["Amount", "HasOpportunityLineItem", "LastModifiedDate"])
    out = normalise(lines, "cdc", RULES)
    assert out.refresh == (OPP_A,)
    assert out.ids == ()
    amount_only = without_changed_fields(cdc("UPDATE", [OPP_B], Amount=150.0))
    assert normalise(amount_only, "cdc", RULES).refresh == (OPP_B,)
    other = normalise(cdc("UPDATE", [OPP_A], ["Description"], Description="x"), "cdc", RULES)
    assert other.refresh == ()
    # With the stage in the same change, the won verdict decides as usual.
    both = cdc("UPDATE", [OPP_A], ["StageName", "Amount"], StageName="Closed Won", Amount=5)
    assert normalise(both, "cdc", RULES).won == (OPP_A,)


def test_a_line_change_says_whether_an_api_client_made_it():
    event = cdc("UPDATE", [OPP_A], ["Amount", "LastModifiedDate"])
    header = event["data"]["payload"]["ChangeEventHeader"]
    assert normalise(event, "cdc", RULES).from_api is False  # the UI: no changeOrigin
    header["changeOrigin"] = ""
    assert normalise(event, "cdc", RULES).from_api is False
    header["changeOrigin"] = "com/salesforce/api/bulkapi/62.0;client=DataLoaderBulkUI/"
    loaded = normalise(event, "cdc", RULES)
    assert (loaded.refresh, loaded.from_api) == ((OPP_A,), True)


# after the first close ------------------------------------------------------------------------


def test_cdc_update_to_a_lost_stage_names_the_records_unwon():
    message = cdc("UPDATE", [OPP_A], ["StageName", "IsWon"], StageName="Closed Lost", IsWon=False)
    out = normalise(message, "cdc", RULES)
    assert out.unwon == (OPP_A,)
    assert out.won == ()
    assert out.recheck == ()
    assert out.deleted == ()


def test_cdc_update_to_an_open_stage_without_is_won_is_re_read():
    # Nothing in the values says won or not: the intake re-reads it (a known deal found no
    # longer won is un-won there).
    out = normalise(
        cdc("UPDATE", [OPP_A], ["StageName"], StageName="Negotiation/Review"), "cdc", RULES
    )
    assert out.recheck == (OPP_A,)
    assert out.unwon == ()


def test_cdc_create_of_a_lost_deal_is_not_unwon():
    out = normalise(cdc("CREATE", [OPP_A], [], StageName="Closed Lost", IsWon=False), "cdc", RULES)
    assert out.unwon == ()
    assert out.won == ()


def test_cdc_delete_and_gap_delete_name_the_records_deleted():
    assert normalise(cdc("DELETE", [OPP_A, OPP_B]), "cdc", RULES).deleted == (OPP_A, OPP_B)
    assert normalise(cdc("GAP_DELETE", [OPP_A]), "cdc", RULES).deleted == (OPP_A,)
    missing = normalise(cdc("DELETE", []), "cdc", RULES)
    assert missing.sweep
    assert missing.malformed


def test_cdc_undelete_is_judged_by_its_values():
    out = normalise(cdc("UNDELETE", [OPP_A], [], StageName="Closed Won", IsWon=True), "cdc", RULES)
    assert out.won == (OPP_A,)
    assert out.deleted == ()


def test_push_topic_updated_to_not_won_and_deleted():
    def push(event_type: str, **sobject: Any) -> dict[str, Any]:
        return {
            "channel": "/topic/Deals",
            "data": {
                "event": {
                    "type": event_type,
                    "replayId": 5,
                    "createdDate": "2026-11-25T10:00:00.000Z",
                },
                "sobject": {"Id": OPP_A, **sobject},
            },
        }

    assert normalise(push("updated", IsWon=False), "push_topic", RULES).unwon == (OPP_A,)
    assert normalise(push("created", IsWon=False), "push_topic", RULES).unwon == ()
    assert normalise(push("deleted"), "push_topic", RULES).deleted == (OPP_A,)


def test_platform_event_that_says_not_won_is_unwon():
    message = {
        "channel": "/event/Deal_Changed__e",
        "data": {"payload": {"OpportunityId__c": OPP_A, "IsWon": False}, "event": {"replayId": 3}},
    }
    assert normalise(message, "platform_event", RULES).unwon == (OPP_A,)

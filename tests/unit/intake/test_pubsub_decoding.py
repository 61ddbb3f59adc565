"""Pub/Sub API decoding: Change Data Capture bitmap fields (the documented example from
Salesforce's "Event Deserialization Considerations"), Avro payloads with cached schemas, and
the same intake decisions as CometD."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sf_bridge.intake.events import EventRules, normalise
from sf_bridge.intake.pubsub.bitmap import BitmapError, decode_bitmap, encode_bitmap
from sf_bridge.intake.pubsub.decoding import SchemaCache, decode_record, streaming_message
from sf_bridge.intake.pubsub.replay import decode_pubsub_marker, encode_pubsub_marker

OPP_ID = "006Hs00001AcmeYIAR"


def _compound(name: str, children: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": [
            "null",
            {
                "type": "record",
                "name": f"{name}Type",
                "fields": [
                    {"name": f"{name}_{i}", "type": ["null", "string"]} for i in range(children)
                ],
            },
        ],
        "default": None,
    }


def documented_schema() -> dict[str, Any]:
    """32 top-level fields, compound ones at positions 4 and 7 (as the documented example's
    `4-0x10` and `7-0x06` require)."""
    fields: list[dict[str, Any]] = []
    for position in range(32):
        if position in (4, 7):
            fields.append(_compound(f"F{position}", 8))
        else:
            fields.append({"name": f"F{position}", "type": ["null", "string"], "default": None})
    return {"type": "record", "name": "TestChangeEvent", "fields": fields}


def test_documented_example_decodes_to_the_fields_at_the_set_bits():
    # 0x650004E0 = 0110 0101 0000 0000 0000 0100 1110 0000: bits 5, 6, 7, 10, 24, 26, 29, 30
    names = decode_bitmap(documented_schema(), ["0x650004E0", "4-0x10", "7-0x06"])
    assert names == [
        "F5",
        "F6",
        "F7",
        "F10",
        "F24",
        "F26",
        "F29",
        "F30",
        "F4.F4_4",  # 0x10: bit 4 of the compound field at position 4
        "F7.F7_1",  # 0x06: bits 1 and 2 of the compound field at position 7
        "F7.F7_2",
    ]


def test_readme_example_of_the_utility_decodes_the_top_level_bitmap_alone():
    assert decode_bitmap(documented_schema(), ["0x650004E0"])[:3] == ["F5", "F6", "F7"]
    assert decode_bitmap(documented_schema(), []) == []


def test_opportunity_stage_change_bitmap():
    schema = {
        "type": "record",
        "name": "OpportunityChangeEvent",
        "fields": [
            {"name": "ChangeEventHeader", "type": "string"},
            {"name": "Name", "type": ["null", "string"]},
            {"name": "StageName", "type": ["null", "string"]},
            {"name": "IsWon", "type": ["null", "boolean"]},
            {"name": "LastModifiedDate", "type": ["null", "long"]},
        ],
    }
    # StageName (2), IsWon (3), LastModifiedDate (4): 0b11100
    assert decode_bitmap(schema, ["0x1C"]) == ["StageName", "IsWon", "LastModifiedDate"]
    assert encode_bitmap(schema, ["StageName", "IsWon", "LastModifiedDate"]) == ["0x1C"]


@pytest.mark.parametrize(
    ("bitmap", "error"),
    [
        (["0xZZ"], "not hexadecimal"),
        (["0x100000000"], "past the schema"),  # bit 32 of a 32-field schema
        (["3-0x01"], "not a compound field"),
        (["40-0x01"], "past the schema"),
        (["4-0x100"], "past the schema"),  # bit 8 of an 8-field compound
        (["garbage"], "neither"),
    ],
)
def test_unreadable_bitmaps_are_refused_with_the_reason(bitmap: list[str], error: str):
    with pytest.raises(BitmapError, match=error):
        decode_bitmap(documented_schema(), bitmap)


@given(
    st.sets(st.integers(0, 31)),
    st.sets(st.integers(0, 7)),
)
def test_encode_and_decode_are_inverse(top: set[int], nested: set[int]):
    schema = documented_schema()
    names = [f"F{i}" for i in sorted(top)] + [f"F7.F7_{i}" for i in sorted(nested)]
    assert decode_bitmap(schema, encode_bitmap(schema, names)) == names


# -- payloads ---------------------------------------------------------------------------------

HEADER = {
    "type": "record",
    "name": "ChangeEventHeader",
    "fields": [
        {"name": "entityName", "type": "string"},
        {"name": "recordIds", "type": {"type": "array", "items": "string"}},
        {"name": "changeType", "type": "string"},
        {"name": "changeOrigin", "type": "string"},
        {"name": "commitTimestamp", "type": "long"},
        {"name": "nulledFields", "type": {"type": "array", "items": "string"}},
        {"name": "diffFields", "type": {"type": "array", "items": "string"}},
        {"name": "changedFields", "type": {"type": "array", "items": "string"}},
    ],
}
CDC_SCHEMA = {
    "type": "record",
    "name": "OpportunityChangeEvent",
    "fields": [
        {"name": "ChangeEventHeader", "type": HEADER},
        {"name": "Name", "type": ["null", "string"], "default": None},
        {"name": "StageName", "type": ["null", "string"], "default": None},
        {"name": "IsWon", "type": ["null", "boolean"], "default": None},
        {"name": "Amount", "type": ["null", "double"], "default": None},
    ],
}


def _encode(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


def _change(changed: list[str], **values: Any) -> dict[str, Any]:
    return {
        "ChangeEventHeader": {
            "entityName": "Opportunity",
            "recordIds": [OPP_ID],
            "changeType": "UPDATE",
            "changeOrigin": "com/salesforce/api/rest/62.0",
            "commitTimestamp": 1_764_633_600_000,
            "nulledFields": [],
            "diffFields": [],
            "changedFields": changed,
        },
        "Name": None,
        "StageName": None,
        "IsWon": None,
        "Amount": None,
        **values,
    }


def _outcome(record: dict[str, Any]) -> Any:
    fetched: list[str] = []

    async def fetch(schema_id: str) -> str:
        fetched.append(schema_id)
        return json.dumps(CDC_SCHEMA)

    cache = SchemaCache(fetch)

    async def decode() -> Any:
        schema = await cache.get("schema-1")
        again = await cache.get("schema-1")
        assert again is schema
        decoded = decode_record(schema, _encode(CDC_SCHEMA, record))
        return streaming_message("/data/OpportunityChangeEvent", schema, decoded, b"\x00\x07")

    message = asyncio.run(decode())
    assert fetched == ["schema-1"]  # cached after the first use
    return message, normalise(message, "cdc", EventRules())


def test_a_won_stage_change_decides_won_as_on_cometd():
    # StageName (2) and IsWon (3) changed: 0x0C
    message, outcome = _outcome(_change(["0x0C"], StageName="Closed Won", IsWon=True))
    header = message["data"]["payload"]["ChangeEventHeader"]
    assert header["changedFields"] == ["StageName", "IsWon"]
    assert "Name" not in message["data"]["payload"]  # null (unchanged) fields are left out
    assert outcome.won == (OPP_ID,)
    assert outcome.replay_id == b"\x00\x07"
    assert outcome.created == "1764633600000"
    assert outcome.malformed is None


def test_an_amount_change_without_the_stage_asks_for_a_refresh():
    _, outcome = _outcome(_change(["0x10"], Amount=1200.0))  # Amount (4)
    assert outcome.won == ()
    assert outcome.refresh == (OPP_ID,)
    assert outcome.from_api


def test_a_lost_deal_is_not_won():
    _, outcome = _outcome(_change(["0x0C"], StageName="Closed Lost", IsWon=False))
    assert outcome.ids == ()
    assert outcome.malformed is None


def test_an_unreadable_bitmap_falls_back_to_the_values_carried():
    _, outcome = _outcome(_change(["0xZZ"], StageName="Closed Won", IsWon=True))
    assert outcome.won == (OPP_ID,)


def test_pubsub_replay_ids_are_stored_as_given():
    raw = bytes(range(256))[:40]
    assert decode_pubsub_marker(encode_pubsub_marker(raw, "now")) == raw
    assert decode_pubsub_marker('{"replay_id_b64": "!!"}') is None
    assert decode_pubsub_marker(None) is None

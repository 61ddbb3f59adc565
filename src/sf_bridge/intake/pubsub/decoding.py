"""Pub/Sub events -> the streaming messages the intake's decisions read.

Each `ConsumerEvent` carries an Avro payload, the id of the schema that encodes it and an
opaque replay id. The schema is fetched once by its id (`GetSchema`) and cached: a schema id
is a fingerprint of the schema, so the same id always means the same schema. The decoded
record is handed to `sf_bridge.intake.events.normalise` in the shape CometD delivers, so both
transports go through one decision code path:

- Change Data Capture: the header's bitmap fields (`changedFields`, `nulledFields`,
  `diffFields`) are decoded to field names; record fields that are null (Pub/Sub sends every
  field, unchanged ones as null) are left out, as CometD leaves them out.
- Platform events: `CreatedDate` arrives as epoch milliseconds.
"""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import fastavro

from sf_bridge.intake.pubsub.bitmap import BitmapError, decode_bitmap
from sf_bridge.logging import get_logger

log = get_logger(__name__)

BITMAP_FIELDS = ("changedFields", "nulledFields", "diffFields")
HEADER = "ChangeEventHeader"


@dataclass(frozen=True)
class EventSchema:
    schema_id: str
    json: dict[str, Any]  # the schema as Salesforce gave it (field order matters for bitmaps)
    parsed: Any  # fastavro's parsed schema


class SchemaCache:
    """Avro schemas by id, fetched with `fetch(schema_id) -> schema JSON` on first use."""

    def __init__(self, fetch: Callable[[str], Awaitable[str]] | None = None) -> None:
        self.fetch = fetch
        self._schemas: dict[str, EventSchema] = {}
        self.fetches = 0

    def __len__(self) -> int:
        return len(self._schemas)

    def add(self, schema_id: str, schema_json: str) -> EventSchema:
        data = json.loads(schema_json)
        schema = EventSchema(schema_id, data, fastavro.parse_schema(data))
        self._schemas[schema_id] = schema
        return schema

    async def get(self, schema_id: str) -> EventSchema:
        found = self._schemas.get(schema_id)
        if found is not None:
            return found
        if self.fetch is None:
            raise KeyError(f"no schema {schema_id!r}")
        self.fetches += 1
        return self.add(schema_id, await self.fetch(schema_id))


def decode_record(schema: EventSchema, payload: bytes) -> dict[str, Any]:
    record = fastavro.schemaless_reader(io.BytesIO(payload), schema.parsed)
    if not isinstance(record, dict):
        raise ValueError("the event payload is not an Avro record")
    return record


def _expand_header(schema: EventSchema, header: Mapping[str, Any]) -> dict[str, Any]:
    expanded = dict(header)
    for name in BITMAP_FIELDS:
        value = header.get(name)
        if not isinstance(value, list):
            continue
        try:
            expanded[name] = decode_bitmap(schema.json, [str(v) for v in value])
        except BitmapError as exc:
            # Without the list, the decision reads the fields the event carries instead.
            log.warning("pubsub_bitmap_unreadable", field=name, error=str(exc))
            del expanded[name]
    return expanded


def streaming_message(
    topic: str, schema: EventSchema, record: Mapping[str, Any], replay_id: bytes
) -> dict[str, Any]:
    """The decoded event as a streaming message (`{"channel", "data": {...}}`)."""
    payload: dict[str, Any] = {k: v for k, v in record.items() if v is not None}
    event: dict[str, Any] = {"replayId": replay_id}
    header = record.get(HEADER)
    if isinstance(header, Mapping):
        payload[HEADER] = _expand_header(schema, header)
    created = record.get("CreatedDate")
    if isinstance(created, int) and not isinstance(created, bool):
        event["createdDate"] = str(created)
    return {
        "channel": topic,
        "data": {"schema": schema.schema_id, "payload": payload, "event": event},
    }

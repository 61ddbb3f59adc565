"""Avro schemas and encoding of the org's events, as the Pub/Sub API delivers them.

- Change events (`OpportunityChangeEvent`): `ChangeEventHeader` first, then every field of the
  object as an optional value (null when unchanged); `changedFields`, `nulledFields` and
  `diffFields` as bitmaps over the schema's field order. Date-time fields are epoch
  milliseconds (long), date fields days since the epoch (int).
- Platform events: `CreatedDate` (epoch milliseconds), `CreatedById`, then the event's fields.

A schema id is a fingerprint of the schema text, so a schema change (a new custom field) gives
a new id; every schema handed out stays available to `GetSchema`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from datetime import UTC, date, datetime
from typing import Any

import fastavro

from sf_bridge.intake.pubsub.bitmap import encode_bitmap
from sf_bridge.sandbox.salesforce_org.schema import (
    BOOLEAN,
    CURRENCY,
    DATE,
    DATETIME,
    DOUBLE,
    INT,
    PERCENT,
    ObjectDef,
)

CHANGE_TYPES = [
    "CREATE",
    "UPDATE",
    "DELETE",
    "UNDELETE",
    "GAP_CREATE",
    "GAP_UPDATE",
    "GAP_DELETE",
    "GAP_UNDELETE",
    "GAP_OVERFLOW",
    "SNAPSHOT",
]
_STRINGS = {"type": "array", "items": "string"}
HEADER_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "ChangeEventHeader",
    "namespace": "com.sforce.eventbus",
    "fields": [
        {"name": "entityName", "type": "string"},
        {"name": "recordIds", "type": _STRINGS},
        {
            "name": "changeType",
            "type": {"type": "enum", "name": "ChangeType", "symbols": CHANGE_TYPES},
        },
        {"name": "changeOrigin", "type": "string"},
        {"name": "transactionKey", "type": "string"},
        {"name": "sequenceNumber", "type": "int"},
        {"name": "commitTimestamp", "type": "long"},
        {"name": "commitNumber", "type": "long"},
        {"name": "commitUser", "type": "string"},
        {"name": "nulledFields", "type": _STRINGS},
        {"name": "diffFields", "type": _STRINGS},
        {"name": "changedFields", "type": _STRINGS},
    ],
}
# Not in change events (as on Salesforce): the record id is in the header.
_NOT_IN_EVENTS = {"Id", "IsDeleted", "SystemModstamp"}
_EPOCH_DAY = date(1970, 1, 1)


def _avro_type(field_type: str) -> str:
    if field_type == BOOLEAN:
        return "boolean"
    if field_type in (DOUBLE, CURRENCY, PERCENT):
        return "double"
    if field_type == INT:
        return "int"
    if field_type == DATETIME:
        return "long"
    if field_type == DATE:
        return "int"
    return "string"


def _optional(name: str, avro_type: str) -> dict[str, Any]:
    return {"name": name, "type": ["null", avro_type], "default": None}


def change_event_schema(obj: ObjectDef) -> dict[str, Any]:
    fields: list[dict[str, Any]] = [{"name": "ChangeEventHeader", "type": HEADER_SCHEMA}]
    for name, field_def in obj.fields.items():
        if name not in _NOT_IN_EVENTS:
            fields.append(_optional(name, _avro_type(field_def.type)))
    return {
        "type": "record",
        "name": f"{obj.name}ChangeEvent",
        "namespace": "com.sforce.eventbus",
        "fields": fields,
    }


def platform_event_schema(name: str, field_types: dict[str, str]) -> dict[str, Any]:
    fields: list[dict[str, Any]] = [
        {"name": "CreatedDate", "type": "long"},
        {"name": "CreatedById", "type": "string"},
    ]
    fields += [_optional(f, _avro_type(t)) for f, t in field_types.items()]
    return {"type": "record", "name": name, "namespace": "com.sforce.eventbus", "fields": fields}


def fingerprint(schema: dict[str, Any]) -> str:
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def epoch_millis(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _value(avro_type: str, field_type: str, value: Any) -> Any:
    if value is None:
        return None
    if field_type == DATETIME:
        return epoch_millis(value)
    if field_type == DATE:
        try:
            day = value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
        except ValueError:
            return None
        return (day - _EPOCH_DAY).days
    if avro_type == "boolean":
        return value if isinstance(value, bool) else None
    if avro_type == "double":
        return (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
    if avro_type == "int":
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None
    return value if isinstance(value, str) else str(value)


class SchemaRegistry:
    """Every schema handed out, by id (thread-safe)."""

    def __init__(self) -> None:
        self._schemas: dict[str, tuple[dict[str, Any], Any]] = {}
        self._lock = threading.Lock()

    def register(self, schema: dict[str, Any]) -> str:
        schema_id = fingerprint(schema)
        with self._lock:
            if schema_id not in self._schemas:
                self._schemas[schema_id] = (schema, fastavro.parse_schema(schema))
        return schema_id

    def json(self, schema_id: str) -> str | None:
        with self._lock:
            found = self._schemas.get(schema_id)
        return json.dumps(found[0]) if found else None

    def encode(self, schema_id: str, record: dict[str, Any]) -> bytes:
        with self._lock:
            parsed = self._schemas[schema_id][1]
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, record)
        return out.getvalue()


def change_event_record(
    schema: dict[str, Any], obj: ObjectDef, payload: dict[str, Any]
) -> dict[str, Any]:
    """The Avro record of a change event whose CometD payload is `payload`."""
    header = dict(payload["ChangeEventHeader"])
    record: dict[str, Any] = {}
    for spec in schema["fields"][1:]:
        name = spec["name"]
        field_def = obj.fields.get(name)
        field_type = field_def.type if field_def else "string"
        record[name] = _value(spec["type"][1], field_type, payload.get(name))
    known = {spec["name"] for spec in schema["fields"]}
    for name in ("changedFields", "nulledFields", "diffFields"):
        names = [f for f in header.get(name) or [] if f.partition(".")[0] in known]
        header[name] = encode_bitmap(schema, names)
    record["ChangeEventHeader"] = {
        "entityName": str(header.get("entityName") or obj.name),
        "recordIds": [str(i) for i in header.get("recordIds") or []],
        "changeType": header.get("changeType") or "UPDATE",
        "changeOrigin": str(header.get("changeOrigin") or ""),
        "transactionKey": str(header.get("transactionKey") or ""),
        "sequenceNumber": int(header.get("sequenceNumber") or 1),
        "commitTimestamp": int(header.get("commitTimestamp") or 0),
        "commitNumber": int(header.get("commitNumber") or 0),
        "commitUser": str(header.get("commitUser") or ""),
        "nulledFields": header["nulledFields"],
        "diffFields": header["diffFields"],
        "changedFields": header["changedFields"],
    }
    return record


def platform_event_record(schema: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "CreatedDate": epoch_millis(payload.get("CreatedDate")) or 0,
        "CreatedById": str(payload.get("CreatedById") or ""),
    }
    for spec in schema["fields"][2:]:
        avro_type = spec["type"][1]
        record[spec["name"]] = _value(avro_type, "", payload.get(spec["name"]))
    return record

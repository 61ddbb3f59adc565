"""The records of the sandbox org, with the behaviour Salesforce adds on write: audit fields,
derived fields (IsWon / IsClosed / Probability from the stage, line totals, the opportunity
amount) and field validation with Salesforce's error codes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sf_bridge.sandbox.salesforce_org.ids import IdFactory, is_valid_id, to_18
from sf_bridge.sandbox.salesforce_org.schema import (
    DATE,
    DATETIME,
    REFERENCE,
    FieldDef,
    ObjectDef,
    custom_field_type,
    is_custom_name,
    standard_objects,
)

Record = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    name: str
    probability: float
    is_closed: bool
    is_won: bool
    forecast_category: str


DEFAULT_STAGES = [
    Stage("Prospecting", 10, False, False, "Pipeline"),
    Stage("Qualification", 10, False, False, "Pipeline"),
    Stage("Needs Analysis", 20, False, False, "Pipeline"),
    Stage("Value Proposition", 50, False, False, "Pipeline"),
    Stage("Id. Decision Makers", 60, False, False, "Pipeline"),
    Stage("Perception Analysis", 70, False, False, "Pipeline"),
    Stage("Proposal/Price Quote", 75, False, False, "Pipeline"),
    Stage("Negotiation/Review", 90, False, False, "Pipeline"),
    Stage("Closed Won", 100, True, True, "Closed"),
    Stage("Closed Lost", 0, True, False, "Omitted"),
]


class RecordError(Exception):
    """A write Salesforce would refuse, with its status code and the fields concerned."""

    def __init__(self, status_code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.fields = fields or []


def coerce(field_def: FieldDef, value: Any) -> Any:
    """A value as stored: dates and datetimes parsed from their JSON strings."""
    if value is None:
        return None
    if field_def.type == DATETIME and isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    if field_def.type == DATE and isinstance(value, str):
        return date.fromisoformat(value[:10])
    return value


class RecordStore:
    """Records by object and id. Thread-safe: every public method takes the store lock."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        ids: IdFactory | None = None,
        *,
        multi_currency: bool = True,
    ) -> None:
        self.clock = clock
        self.ids = ids or IdFactory()
        self.multi_currency = multi_currency
        self.objects: dict[str, ObjectDef] = standard_objects(multi_currency=multi_currency)
        self.records: dict[str, dict[str, Record]] = {name: {} for name in self.objects}
        self.stages: dict[str, Stage] = {s.name: s for s in DEFAULT_STAGES}
        # (object, reference field) -> parent id -> child ids, for subqueries and roll-ups.
        self._references: dict[tuple[str, str], dict[str, list[str]]] = {}
        self.lock = threading.RLock()
        self.user_id = self.insert(
            "User",
            {
                "Name": "Integration User",
                "FirstName": "Integration",
                "LastName": "User",
                "Email": "integration@sandbox.example",
                "Username": "integration@sandbox.example",
                "Alias": "integ",
                "IsActive": True,
            },
        )
        self.standard_pricebook_id = self.insert(
            "Pricebook2", {"Name": "Standard Price Book", "IsActive": True, "IsStandard": True}
        )

    # -- schema --------------------------------------------------------------------------
    def object_def(self, sobject: str) -> ObjectDef | None:
        if sobject in self.objects:
            return self.objects[sobject]
        for name, obj in self.objects.items():
            if name.lower() == sobject.lower():
                return obj
        return None

    def define_field(self, sobject: str, name: str, field_type: str = "string") -> None:
        """Declares a custom field so that SOQL can select it before any record holds a value."""
        obj = self._require_object(sobject)
        if not is_custom_name(name):
            raise ValueError(f"custom field names end in __c: {name!r}")
        with self.lock:
            if obj.field_named(name) is None:
                obj.fields[name] = FieldDef(name, field_type)
                for record in self.records[obj.name].values():
                    record.setdefault(name, None)

    def _require_object(self, sobject: str) -> ObjectDef:
        obj = self.object_def(sobject)
        if obj is None:
            raise RecordError("NOT_FOUND", f"sObject type '{sobject}' is not supported.")
        return obj

    # -- reads ---------------------------------------------------------------------------
    def get(self, sobject: str, record_id: str | None) -> Record | None:
        if not record_id:
            return None
        with self.lock:
            records = self.records.get(sobject)
            if records is None:
                records = self.records[self._require_object(sobject).name]
            found = records.get(record_id)
            if found is None and is_valid_id(record_id):
                found = records.get(to_18(record_id))
            return found

    def all(self, sobject: str) -> list[Record]:
        with self.lock:
            return list(self.records[self._require_object(sobject).name].values())

    def children(self, child: str, foreign_key: str, parent_id: str) -> list[Record]:
        with self.lock:
            ids = self._references.get((child, foreign_key), {}).get(parent_id, [])
            records = self.records[child]
            return [records[i] for i in ids if records[i].get(foreign_key) == parent_id]

    def _index_references(self, obj: ObjectDef, record: Record, before: Record | None) -> None:
        for name, field_def in obj.fields.items():
            if field_def.type != REFERENCE:
                continue
            value, old = record.get(name), (before or {}).get(name)
            if value == old and before is not None:
                continue
            index = self._references.setdefault((obj.name, name), {})
            if old and record["Id"] in index.get(old, []):
                index[old].remove(record["Id"])
            if value:
                index.setdefault(value, []).append(record["Id"])

    # -- writes --------------------------------------------------------------------------
    def insert(self, sobject: str, values: dict[str, Any]) -> str:
        """Creates a record (as an admin would: read-only fields may be set) and returns its id."""
        obj = self._require_object(sobject)
        with self.lock:
            now = self.clock()
            record_id = self.ids.new_id(obj.name)
            record: Record = dict.fromkeys(obj.fields)
            record.update(
                {
                    "Id": record_id,
                    "CreatedDate": now,
                    "LastModifiedDate": now,
                    "SystemModstamp": now,
                    "CreatedById": getattr(self, "user_id", None) or record_id,
                    "LastModifiedById": getattr(self, "user_id", None) or record_id,
                    "IsDeleted": False,
                }
            )
            if "OwnerId" in obj.fields:
                record["OwnerId"] = getattr(self, "user_id", None)
            for name, value in values.items():
                field_def = self._field_for_write(obj, name, value, allow_read_only=True)
                record[field_def.name] = coerce(field_def, value)
            self.records[obj.name][record_id] = record
            self._index_references(obj, record, None)
            self._derive(obj.name, record, None, set(record))
            return record_id

    def update(
        self,
        sobject: str,
        record_id: str,
        values: dict[str, Any],
        *,
        as_api: bool = True,
        dry_run: bool = False,
        at: datetime | None = None,
    ) -> list[str]:
        """Writes `values`; returns the names of the fields whose value changed (audit fields
        included when anything changed). `as_api` enforces what the REST API refuses;
        `dry_run` only validates; `at` is the transaction's time (the clock by default)."""
        obj = self._require_object(sobject)
        with self.lock:
            record = self.get(obj.name, record_id)
            if record is None:
                if is_valid_id(record_id):
                    raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
                raise RecordError(
                    "MALFORMED_ID", f"{obj.name} ID: id value of incorrect type: {record_id}"
                )
            resolved = {
                self._field_for_write(obj, name, value, allow_read_only=not as_api).name: value
                for name, value in values.items()
            }
            if as_api:
                self._check_picklists(obj.name, resolved)
            if dry_run:
                return []
            before = dict(record)
            for name, value in resolved.items():
                record[name] = coerce(obj.fields[name], value)
            self._index_references(obj, record, before)
            self._derive(obj.name, record, before.get("StageName"), set(resolved))
            changed = [f for f in record if record[f] != before.get(f)]
            if changed:
                now = at or self.clock()
                record["LastModifiedDate"] = now
                record["SystemModstamp"] = now
                record["LastModifiedById"] = self.user_id
                changed += [f for f in ("LastModifiedDate", "SystemModstamp") if f not in changed]
            return changed

    def touch(self, record: Record) -> None:
        """Marks a record modified now (after a roll-up from a child record)."""
        with self.lock:
            now = self.clock()
            record["LastModifiedDate"] = now
            record["SystemModstamp"] = now
            record["LastModifiedById"] = self.user_id

    def _field_for_write(
        self, obj: ObjectDef, name: str, value: Any, *, allow_read_only: bool
    ) -> FieldDef:
        field_def = obj.field_named(name)
        if field_def is None:
            if is_custom_name(name):
                field_def = FieldDef(name, custom_field_type(value))
                obj.fields[name] = field_def
                for record in self.records[obj.name].values():
                    record.setdefault(name, None)
                return field_def
            raise RecordError(
                "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj.name}", [name]
            )
        if not field_def.updateable and not allow_read_only:
            raise RecordError(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {field_def.name}. Please check the security "
                "settings of this field and verify that it is read/write for your profile or "
                "permission set.",
                [field_def.name],
            )
        return field_def

    def _check_picklists(self, sobject: str, values: dict[str, Any]) -> None:
        if sobject == "Opportunity" and "StageName" in values:
            stage = values["StageName"]
            if stage not in self.stages:
                raise RecordError(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"Stage: bad value for restricted picklist field: {stage}",
                    ["StageName"],
                )

    # -- derived fields ------------------------------------------------------------------
    def _derive(
        self, sobject: str, record: Record, previous_stage: str | None, written: set[str]
    ) -> None:
        if sobject == "Opportunity":
            stage = self.stages.get(record.get("StageName") or "")
            if stage is not None:
                if record["StageName"] != previous_stage:
                    if "Probability" not in written or record.get("Probability") is None:
                        record["Probability"] = float(stage.probability)
                    if "ForecastCategoryName" not in written or not record.get(
                        "ForecastCategoryName"
                    ):
                        record["ForecastCategoryName"] = stage.forecast_category
                record["IsWon"] = stage.is_won
                record["IsClosed"] = stage.is_closed
        elif sobject == "OpportunityLineItem":
            quantity = float(record.get("Quantity") or 0)
            unit_price = float(record.get("UnitPrice") or 0)
            discount = float(record.get("Discount") or 0)
            record["TotalPrice"] = round(quantity * unit_price * (1 - discount / 100), 2)
            opportunity = self.get("Opportunity", record.get("OpportunityId"))
            if opportunity is not None:
                lines = self.children("OpportunityLineItem", "OpportunityId", opportunity["Id"])
                opportunity["Amount"] = round(sum(line["TotalPrice"] for line in lines), 2)
                opportunity["HasOpportunityLineItem"] = bool(lines)

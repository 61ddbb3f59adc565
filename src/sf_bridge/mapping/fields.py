"""Salesforce field names: validation, parsing the mapping's `Object.Field` notation, reading
values out of a REST query record."""

from __future__ import annotations

import re
from typing import Any

from sf_bridge.mapping.model import FieldRef, SourceObject

_PART = r"[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*"
API_NAME = re.compile(rf"^(?:{_PART}__)?{_PART}(?:__(?:c|r|pc|pr))?$")
FIELD_SUFFIXES_NOT_WRITABLE = ("__r", "__pr")
SOURCE_OBJECTS: tuple[SourceObject, ...] = ("Opportunity", "Account", "OpportunityLineItem")
MAX_NAME_LENGTH = 80


def is_api_name(name: str) -> bool:
    """A syntactically valid Salesforce API name (standard `Name`, custom `Seats__c`,
    namespaced `acme__Seats__c`, relationship `Billing_Contact__r`)."""
    return len(name) <= MAX_NAME_LENGTH and bool(API_NAME.match(name))


def is_writable_field_name(name: str) -> bool:
    return is_api_name(name) and not name.endswith(FIELD_SUFFIXES_NOT_WRITABLE)


def _get(record: Any, key: str) -> Any:
    if not isinstance(record, dict):
        return None
    if key in record:
        return record[key]
    lowered = key.lower()
    for name, value in record.items():
        if name.lower() == lowered:
            return value
    return None


def read_path(record: Any, path: tuple[str, ...] | list[str]) -> Any:
    """The value at `path` in a REST record (relationships nested), case-insensitive; None when
    any step is absent or null."""
    current = record
    for key in path:
        current = _get(current, key)
        if current is None:
            return None
    return current


def read_ref(ref: FieldRef, opportunity: dict[str, Any], line: dict[str, Any] | None) -> Any:
    if ref.obj == "Opportunity":
        return read_path(opportunity, ref.path)
    if ref.obj == "Account":
        return read_path(opportunity, ("Account", *ref.path))
    return read_path(line, ref.path) if line is not None else None


def line_product_code(line: dict[str, Any]) -> str | None:
    value = read_path(line, ("PricebookEntry", "Product2", "ProductCode"))
    return str(value).strip() if value not in (None, "") else None


def line_product_id(line: dict[str, Any]) -> str | None:
    value = read_path(line, ("PricebookEntry", "Product2Id")) or read_path(line, ("Product2Id",))
    return str(value).strip() if value not in (None, "") else None


def line_items(opportunity: dict[str, Any]) -> list[dict[str, Any]]:
    """The `OpportunityLineItems` subquery records (the subquery is null when there are none)."""
    sub = _get(opportunity, "OpportunityLineItems")
    if isinstance(sub, dict):
        records = sub.get("records") or []
        return [r for r in records if isinstance(r, dict)]
    if isinstance(sub, list):
        return [r for r in sub if isinstance(r, dict)]
    return []

"""Updates through the REST API: one sObject, or a collection of up to 200 with per-record
results and Salesforce's allOrNone semantics. Read-only and unknown fields are refused the way
Salesforce refuses them; changes to opportunities emit their events."""

from __future__ import annotations

from typing import Any

from sf_bridge.sandbox.salesforce_org.core import Org
from sf_bridge.sandbox.salesforce_org.schema import is_custom_name
from sf_bridge.sandbox.salesforce_org.store import RecordError


def api_update(org: Org, sobject: str, record_id: str, values: dict[str, Any]) -> None:
    """An update through the REST API: read-only fields refused, events emitted."""
    with org.store.lock:
        name = _check_api_update(org, sobject, record_id, values)
        changed = org.store.update(name, record_id, values, as_api=True)
        if name == "Opportunity":
            org.emit_update(record_id, changed, origin=org.rest_origin)


def _check_api_update(org: Org, sobject: str, record_id: str, values: dict[str, Any]) -> str:
    fault = org.take_update_fault(record_id)
    if fault is not None:
        raise RecordError(fault.status_code, fault.message)
    obj = org.store.object_def(sobject)
    if obj is None:
        raise RecordError("INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
    for name in values:
        if obj.field_named(name) is None and not (
            is_custom_name(name) and obj.name == "Opportunity"
        ):
            raise RecordError(
                "INVALID_FIELD",
                f"No such column '{name}' on sobject of type {obj.name}",
                [name],
            )
    org.store.update(obj.name, record_id, values, as_api=True, dry_run=True)
    return obj.name


def api_update_collection(
    org: Org, records: list[dict[str, Any]], *, all_or_none: bool
) -> list[dict[str, Any]]:
    """The composite sObject collections update: one result per record, in order."""
    prepared: list[tuple[str, str, dict[str, Any]] | RecordError] = []
    for raw in records:
        values = dict(raw)
        attributes = values.pop("attributes", None)
        record_id = values.pop("id", None) or values.pop("Id", None)
        sobject = attributes.get("type") if isinstance(attributes, dict) else None
        if not sobject:
            prepared.append(RecordError("INVALID_TYPE", "Unable to find type for record"))
        elif not record_id:
            prepared.append(RecordError("MISSING_ARGUMENT", "Id not specified in an update call"))
        else:
            prepared.append((str(sobject), str(record_id), values))
    results: list[dict[str, Any]] = []
    with org.store.lock:
        if all_or_none:
            failures: list[RecordError | None] = []
            for item in prepared:
                if isinstance(item, RecordError):
                    failures.append(item)
                    continue
                try:
                    _check_api_update(org, *item)
                    failures.append(None)
                except RecordError as exc:
                    failures.append(exc)
            if any(failures):
                return [
                    _collection_error(
                        failure
                        or RecordError(
                            "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                            "Record rolled back because not all records were valid and the "
                            "request was using AllOrNone header",
                        )
                    )
                    for failure in failures
                ]
        for item in prepared:
            if isinstance(item, RecordError):
                results.append(_collection_error(item))
                continue
            try:
                api_update(org, *item)
                results.append({"id": item[1], "success": True, "errors": []})
            except RecordError as exc:
                results.append(_collection_error(exc))
    return results


def _collection_error(error: RecordError) -> dict[str, Any]:
    return {
        "success": False,
        "errors": [
            {"statusCode": error.status_code, "message": error.message, "fields": error.fields}
        ],
    }

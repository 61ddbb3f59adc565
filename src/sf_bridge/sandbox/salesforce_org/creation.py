"""Record creation through the REST API (`POST /sobjects/<type>`): what a user of
`sf-bridge sandbox` needs to set up deals from outside the process, and platform event
publishing (`POST /sobjects/<Name>__e`). Salesforce's checks and derived fields apply."""

from __future__ import annotations

from typing import Any

from sf_bridge.sandbox.salesforce_org.core import Org
from sf_bridge.sandbox.salesforce_org.events import platform_event_data
from sf_bridge.sandbox.salesforce_org.ids import is_valid_id
from sf_bridge.sandbox.salesforce_org.schema import is_custom_name
from sf_bridge.sandbox.salesforce_org.store import RecordError

CREATEABLE = {
    "Account",
    "Contact",
    "Opportunity",
    "OpportunityLineItem",
    "OpportunityContactRole",
    "Product2",
    "PricebookEntry",
}
REQUIRED = {
    "Account": ["Name"],
    "Contact": ["LastName"],
    "Opportunity": ["Name", "StageName", "CloseDate"],
    "OpportunityLineItem": ["OpportunityId", "Quantity"],
    "OpportunityContactRole": ["OpportunityId", "ContactId"],
    "Product2": ["Name"],
    "PricebookEntry": ["Pricebook2Id", "Product2Id", "UnitPrice"],
}


def api_create(org: Org, sobject: str, values: dict[str, Any]) -> str:
    """Creates a record (or publishes a platform event); returns its id. Raises RecordError
    with Salesforce's status codes."""
    if sobject in org.platform_events:
        return _publish_platform_event(org, sobject, values)
    obj = org.store.object_def(sobject)
    if obj is None or obj.name not in CREATEABLE:
        raise RecordError("NOT_FOUND", "The requested resource does not exist")
    canonical: dict[str, Any] = {}
    for name, value in values.items():
        if name == "attributes":
            continue
        field_def = obj.field_named(name)
        if field_def is None:
            if is_custom_name(name) and obj.name == "Opportunity":
                canonical[name] = value
                continue
            raise RecordError(
                "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj.name}", [name]
            )
        if not field_def.can_create:
            raise RecordError(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {field_def.name}. Please check the security "
                "settings of this field and verify that it is read/write for your profile or "
                "permission set.",
                [field_def.name],
            )
        canonical[field_def.name] = value
    missing = [f for f in REQUIRED[obj.name] if canonical.get(f) in (None, "")]
    if missing:
        raise RecordError(
            "REQUIRED_FIELD_MISSING",
            f"Required fields are missing: [{', '.join(missing)}]",
            missing,
        )
    with org.store.lock:
        return _CREATORS.get(obj.name, _plain)(org, obj.name, canonical)


def _check_reference(org: Org, sobject: str, record_id: Any, field: str) -> dict[str, Any]:
    record = org.store.get(sobject, str(record_id)) if is_valid_id(record_id) else None
    if record is None:
        raise RecordError(
            "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {field}", [field]
        )
    return record


def _plain(org: Org, sobject: str, values: dict[str, Any]) -> str:
    return org.store.insert(sobject, values)


def _contact(org: Org, sobject: str, values: dict[str, Any]) -> str:
    full_name = f"{values.get('FirstName') or ''} {values['LastName']}".strip()
    return org.store.insert(sobject, {"Name": full_name} | values)


def _opportunity(org: Org, sobject: str, values: dict[str, Any]) -> str:
    if values["StageName"] not in org.store.stages:
        raise RecordError(
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            f"Stage: bad value for restricted picklist field: {values['StageName']}",
            ["StageName"],
        )
    defaults = {
        **org.currency_fields(),
        "Pricebook2Id": org.store.standard_pricebook_id,
        "Amount": 0.0,
    }
    opportunity_id = org.store.insert(sobject, defaults | values)
    record = org.store.get(sobject, opportunity_id)
    assert record is not None
    changed = [f for f, v in record.items() if v is not None]
    org.notify_opportunity_change(record, changed, origin=org.rest_origin, created=True)
    return opportunity_id


def _line_item(org: Org, sobject: str, values: dict[str, Any]) -> str:
    opportunity = _check_reference(org, "Opportunity", values["OpportunityId"], "OpportunityId")
    if values.get("PricebookEntryId"):
        entry = _check_reference(
            org, "PricebookEntry", values["PricebookEntryId"], "PricebookEntryId"
        )
    elif values.get("Product2Id"):
        _check_reference(org, "Product2", values["Product2Id"], "Product2Id")
        entry = next(
            e for e in org.store.all("PricebookEntry") if e["Product2Id"] == values["Product2Id"]
        )
    else:
        raise RecordError(
            "REQUIRED_FIELD_MISSING",
            "Required fields are missing: [PricebookEntryId]",
            ["PricebookEntryId"],
        )
    if values.get("UnitPrice") is None and values.get("TotalPrice") is None:
        raise RecordError(
            "REQUIRED_FIELD_MISSING", "Required fields are missing: [UnitPrice]", ["UnitPrice"]
        )
    product = org.store.get("Product2", entry["Product2Id"])
    assert product is not None
    derived = {
        "PricebookEntryId": entry["Id"],
        "Product2Id": entry["Product2Id"],
        "ProductCode": entry["ProductCode"],
        "Name": f"{opportunity['Name']} {product['Name']}",
        "ListPrice": entry["UnitPrice"],
        **org.currency_fields(opportunity.get("CurrencyIsoCode")),
        "SortOrder": len(
            org.store.children("OpportunityLineItem", "OpportunityId", opportunity["Id"])
        )
        + 1,
    }
    if values.get("UnitPrice") is None:
        quantity = float(values["Quantity"]) or 1.0
        values = values | {"UnitPrice": float(values["TotalPrice"]) / quantity}
    before = dict(opportunity)
    line_id = org.store.insert(sobject, derived | values)
    changed = [f for f in ("Amount", "HasOpportunityLineItem") if opportunity[f] != before[f]]
    if changed:
        # The roll-up changes the opportunity: Salesforce emits its change event too.
        org.store.touch(opportunity)
        org.notify_opportunity_change(
            opportunity, [*changed, "LastModifiedDate"], origin=org.rest_origin, created=False
        )
    return line_id


def _pricebook_entry(org: Org, sobject: str, values: dict[str, Any]) -> str:
    product = _check_reference(org, "Product2", values["Product2Id"], "Product2Id")
    _check_reference(org, "Pricebook2", values["Pricebook2Id"], "Pricebook2Id")
    derived = {
        "Name": product["Name"],
        "ProductCode": product["ProductCode"],
        **org.currency_fields(),
        "IsActive": True,
    }
    return org.store.insert(sobject, derived | values)


def _publish_platform_event(org: Org, name: str, values: dict[str, Any]) -> str:
    fields = {k: v for k, v in values.items() if k != "attributes"}
    unknown = [k for k in fields if not is_custom_name(k)]
    if unknown:
        raise RecordError(
            "INVALID_FIELD", f"No such column '{unknown[0]}' on sobject of type {name}", unknown
        )
    event = org.events.publish(
        f"/event/{name}", platform_event_data(name, fields, org.now(), org.user_id)
    )
    return f"e00{event.replay_id:015d}"[:18]


_CREATORS = {
    "Contact": _contact,
    "Opportunity": _opportunity,
    "OpportunityLineItem": _line_item,
    "PricebookEntry": _pricebook_entry,
}

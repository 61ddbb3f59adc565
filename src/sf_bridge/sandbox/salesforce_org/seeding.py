"""Prepares a sandbox org for a set of mappings: the custom fields they read and write exist,
and every product code they name is on the standard price book. Used by `sf-bridge sandbox`
(and usable by anything that runs deals against the sandbox)."""

from __future__ import annotations

from typing import Any

from sf_bridge.sandbox.salesforce_org.core import Org
from sf_bridge.sandbox.salesforce_org.schema import (
    CURRENCY,
    DATE,
    DOUBLE,
    PERCENT,
    PICKLIST,
    STRING,
    is_custom_name,
)

_INTERVAL_NAMES = {"month": "monthly", "year": "yearly"}


def prepare_for_mappings(org: Org, mappings: Any) -> dict[str, list[str]]:
    """Declares the mappings' custom fields and seeds their products; returns what was set up
    (`{"fields": ["Opportunity.Seats__c", ...], "products": ["SB-TEAM-M", ...]}`)."""
    numeric_sources = {
        id(ref)
        for name, source in getattr(mappings, "entitlement_sources", {}).items()
        if _is_numeric_feature(mappings, name) and not getattr(source, "values", ())
        for ref in source.fields
    }
    typed = _term_field_types(getattr(mappings, "terms", None))
    fields: list[str] = []
    for ref in mappings.referenced_fields():
        if len(ref.path) == 1 and is_custom_name(ref.path[0]):
            field_type = DOUBLE if id(ref) in numeric_sources else STRING
            field_type = typed.get(str(ref), field_type)
            org.define_field(ref.obj, ref.path[0], field_type)
            fields.append(f"{ref.obj}.{ref.path[0]}")
    write_back = getattr(mappings, "write_back", None)
    for name in vars(write_back).values() if write_back is not None else ():
        if isinstance(name, str) and is_custom_name(name):
            org.define_field("Opportunity", name)
            fields.append(f"Opportunity.{name}")
    products: dict[str, str] = {}
    if getattr(mappings, "match_by", "product_code") == "product_code":
        for code, rule in mappings.products.items():
            products[code] = _product_name(mappings, rule)
        org.seed_products(products)
    return {"fields": sorted(set(fields)), "products": sorted(products)}


def _term_field_types(terms: Any) -> dict[str, str]:
    """The types of the fields the contract and discount rules read, as an org defines them:
    a Date start, a Number term, a Percent and a Currency discount, a picklist duration."""
    if terms is None:
        return {}
    found: dict[str, str] = {}

    def note(source: Any, field_type: str) -> None:
        for ref in getattr(source, "fields", ()) if source is not None else ():
            found[str(ref)] = field_type

    contract = terms.contract
    for ref in (contract.start_date, contract.line_start_date):
        if ref is not None:
            found[str(ref)] = DATE
    note(contract.term_months, DOUBLE)
    if terms.discount is not None:
        note(terms.discount.percent, PERCENT)
        note(terms.discount.amount, CURRENCY)
        note(terms.discount.duration, PICKLIST)
        note(terms.discount.months, DOUBLE)
    return found


def _is_numeric_feature(mappings: Any, name: str) -> bool:
    feature = getattr(mappings, "features", {}).get(name)
    return getattr(feature, "kind", None) in {"seats", "limit"}


def _product_name(mappings: Any, rule: Any) -> str:
    item = mappings.plans.get(rule.plan) if rule.plan else mappings.addons.get(rule.addon)
    name = getattr(item, "display_name", None) or rule.item_name or rule.key
    interval = _INTERVAL_NAMES.get(rule.interval or "")
    return f"{name} ({interval})" if interval else str(name)

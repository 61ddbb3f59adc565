"""The stable codes of mapping problems, with what each means. docs/mappings.md lists them;
scripts may match on them, so a code is never renamed."""

from __future__ import annotations

from sf_bridge.plan import MappingError

# Problems in the mapping files (`sf-bridge mappings check`).
CHECK_CODES: dict[str, str] = {
    "yaml_syntax": "the file is not valid YAML",
    "files_changing": "the mapping files changed each time they were read (a save under way)",
    "file_too_large": "a file in the mappings folder larger than a mapping file may be (1 MB)",
    "unknown_key": "a key the format does not know (often misspelled)",
    "missing_key": "a required key is absent",
    "wrong_type": "a value of the wrong kind (text for a number, a flag used as a limit, ...)",
    "missing_value": "a key with nothing after it",
    "duplicate_key": "the same key twice in one block",
    "duplicate_section": "a top-level section in two files",
    "missing_section": "a required section is in no file",
    "no_mapping_files": "the folder does not exist or has no .yaml files",
    "invalid_name": "a plan, add-on or feature name that is not lower_case_with_underscores",
    "invalid_choice": "a value outside a fixed list (interval, kind, policy, ...)",
    "unknown_feature": "a reference to a feature not in `features`",
    "unknown_plan": "a reference to a plan not in `plans`",
    "unknown_addon": "a reference to an add-on not in `addons`",
    "duplicate_product_code": "one product code mapped twice",
    "invalid_product_id": "not a Product2 Id while `match_products_by: product_id`",
    "variable_without_source": "a variable entitlement with no source and no default",
    "negative_value": "a negative amount or number",
    "not_an_integer": "a fraction where a whole number is required",
    "value_too_small": "a number below the allowed minimum",
    "value_too_large": "a number above the allowed maximum (a contract term over 1200 months)",
    "value_out_of_range": "a discount percentage not above 0 and at most 100",
    "invalid_amount": "a price with more decimals than its currency has",
    "invalid_currency": "not an ISO 4217 currency code",
    "missing_price": "a plan or add-on sold in an accepted currency and interval has no price",
    "duplicate_price": "two prices for one currency and interval",
    "duplicate_lookup_key": "one Stripe lookup key used for two prices",
    "missing_interval": "a billed product whose interval is not said",
    "invalid_field_name": "not a valid Salesforce API name",
    "invalid_source": "a field reference that does not start with Opportunity., Account. or "
    "OpportunityLineItem.",
    "invalid_bounds": "min above max, or a default outside min..max",
    "conflicting_settings": "settings that contradict each other",
    "custom_plan_price": "prices on a custom (not billed) plan",
    "invalid_combine": "a `combine` rule that does not fit the feature's type (`sum` or `max` on "
    "a flag, `any` on a number)",
}

# Reasons one deal does not map (`map_opportunity`, `sf-bridge mappings preview`).
ENGINE_CODES: dict[str, str] = {
    "invalid_opportunity": "the record is not an Opportunity (no Id)",
    "unknown_product": "a line's product is not in `products`",
    "no_plan": "no line sells a plan",
    "multiple_plans": "more than one line sells a plan",
    "addon_not_allowed": "an add-on not sold with the deal's plan",
    "invalid_quantity": "a quantity that is zero, negative, fractional, or more than 1 for a "
    "plan not priced per unit",
    "missing_value": "a required value is empty on the deal",
    "invalid_value": "a value that is not a number, a whole number, or true/false as needed",
    "value_out_of_bounds": "a value outside the entitlement's min..max",
    "unknown_picklist_value": "a picklist value the mapping's `values` table does not list",
    "unsupported_currency": "the deal's currency is not in `currencies`",
    "no_catalog_price": "no catalog price for the deal's currency and interval",
    "mixed_intervals": "monthly and yearly products on one deal",
    "invalid_price": "a negative sales price or a discount outside 0..100",
    "price_override_not_allowed": "a negotiated price while `price_overrides: reject`",
    "missing_customer_identifier": "no account or no value in the customer identifier field",
    "missing_billing_email": "an invoiced deal without a billing email",
    "invalid_billing_email": "a billing email that is not an email address",
    "invalid_date": "a contract or line start date that is not a date",
    "line_outside_contract": "a line that starts before the contract starts or after it ends",
    "invalid_discount": "a deal discount percentage not above 0 and at most 100, or a negative "
    "discount amount",
    "conflicting_discount": "a deal with both a discount percentage and a discount amount",
    "no_subscription_to_amend": "an amendment on an account without a live subscription",
    "too_many_items": "the deal needs more subscription items than Stripe allows on one "
    "subscription (20)",
}


def mapping_error(code: str, message: str, hint: str, where: str = "") -> MappingError:
    """A `MappingError` with a known code (an unknown one is a programming error)."""
    if code not in ENGINE_CODES:
        raise ValueError(f"unknown mapping error code {code!r}")
    return MappingError(code=code, message=message, hint=hint, where=where)

"""Salesforce record ids as sf-bridge keys them: always the 18-character form.

Salesforce shows 15-character, case-sensitive ids in URLs and reports and returns the
18-character, case-insensitive form from its API; both name the same record. Whatever form a
person, a file, an event or a product passes, sf-bridge stores and compares the 18-character
form, so one record never has two keys.
"""

from __future__ import annotations

from typing import Any

from sf_bridge.crm.soql import is_salesforce_id, to_18
from sf_bridge.errors import SfBridgeError

VALID_ID = (
    "a Salesforce Id is 15 or 18 letters and digits, as in 006Hs00001AcmeYIAR or its "
    "15-character form 006Hs00001AcmeY (Opportunity Ids start with 006, Account Ids with 001); "
    "either form is accepted"
)


class InvalidSalesforceId(SfBridgeError):
    """This is not a Salesforce record Id."""

    code = "invalid_salesforce_id"


def record_id(
    value: object, *, what: str = "record", error: type[SfBridgeError] = InvalidSalesforceId
) -> str:
    """The 18-character form of a 15- or 18-character id (surrounding blanks ignored);
    `error` (InvalidSalesforceId by default) naming the value and the expected shape otherwise."""
    text = value.strip() if isinstance(value, str) else value
    if not is_salesforce_id(text):
        raise error(f"{value!r} is not a Salesforce {what} Id.", hint=f"{VALID_ID}.")
    assert isinstance(text, str)
    return to_18(text)


def opportunity_id(value: object, *, error: type[SfBridgeError] = InvalidSalesforceId) -> str:
    return record_id(value, what="Opportunity", error=error)


def account_id(value: object, *, error: type[SfBridgeError] = InvalidSalesforceId) -> str:
    return record_id(value, what="Account", error=error)


def local_number(ref: str | int) -> int | None:
    """sf-bridge's own deal or customer number when `ref` is one (digits, shorter than any
    Salesforce id), else None: the reference is then a Salesforce id or nothing known."""
    text = str(ref).strip()
    return int(text) if text.isdigit() and len(text) < 15 else None


def maybe_record_id(value: str) -> str:
    """The 18-character form when `value` is a Salesforce id, else `value` unchanged (for
    references that may also be sf-bridge's own numbers)."""
    text = value.strip()
    return to_18(text) if is_salesforce_id(text) else text


def with_18_character_ids(
    record: dict[str, Any], *, error: type[SfBridgeError] = InvalidSalesforceId
) -> dict[str, Any]:
    """An Opportunity record (as a file gives it) with the `Id`, `AccountId` and `Account.Id`
    it carries in their 18-character form; the other values are left as they are."""
    result = dict(record)
    if result.get("Id"):
        result["Id"] = opportunity_id(result["Id"], error=error)
    if result.get("AccountId"):
        result["AccountId"] = account_id(result["AccountId"], error=error)
    account = result.get("Account")
    if isinstance(account, dict) and account.get("Id"):
        result["Account"] = {**account, "Id": account_id(account["Id"], error=error)}
    return result

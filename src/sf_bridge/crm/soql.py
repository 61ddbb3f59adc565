"""SOQL text for the few queries sf-bridge issues. Pure functions; nothing here does I/O.

Values never reach SOQL unchecked: opportunity ids must be 15 or 18 alphanumerics and field
names must be API names (`Account.Name`, `Seats__c`), so a mapping file or an event payload
cannot inject query text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime

from sf_bridge.errors import CrmRejected

ID_PATTERN = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
FIELD_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*$")
MAX_IDS_PER_QUERY = 200

# Selected whatever the mapping says: intake and provisioning rely on them.
REQUIRED_OPPORTUNITY_FIELDS = ("Id", "StageName", "IsWon", "LastModifiedDate", "AccountId")
REQUIRED_LINE_FIELDS = ("Id",)
# Exists only in orgs with multi-currency; a single-currency org's one currency is here:
CURRENCY_FIELD = "CurrencyIsoCode"
ORGANIZATION_CURRENCY = "SELECT DefaultCurrencyIsoCode FROM Organization"


def is_salesforce_id(value: object) -> bool:
    """True for a 15 or 18 character alphanumeric Salesforce record id."""
    return isinstance(value, str) and ID_PATTERN.match(value) is not None


_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def _suffix(id15: str) -> str:
    """The 3 characters that record which of the 15 are upper case (5 per character)."""
    suffix = ""
    for block in range(3):
        bits = 0
        for position, char in enumerate(id15[block * 5 : block * 5 + 5]):
            if "A" <= char <= "Z":
                bits |= 1 << position
        suffix += _SUFFIX_ALPHABET[bits]
    return suffix


def _case_from_suffix(head: str, suffix: str) -> str | None:
    """The 15 characters with the case their suffix records; None when it cannot describe
    them (a digit marked upper case)."""
    chars: list[str] = []
    for block, code in enumerate(suffix):
        bits = _SUFFIX_ALPHABET.find(code)
        if bits < 0:
            return None
        for position, char in enumerate(head[block * 5 : block * 5 + 5]):
            upper = bool(bits & (1 << position))
            if upper and not char.isalpha():
                return None
            chars.append(char.upper() if upper else char.lower())
    return "".join(chars)


@functools.lru_cache(maxsize=65536)
def to_18(value: str) -> str:
    """The case-insensitive 18-character form of a record id (15-character ids gain their
    checksum suffix), so one record has one key whichever form an event carried.

    An 18-character id compares case-insensitively: its suffix is upper-cased, and an id
    whose case was folded as a whole (`001a0000006vm9riac`) gets back the case its suffix
    records. Any other 18-character id is kept as given."""
    if not is_salesforce_id(value):
        raise ValueError(f"not a Salesforce id: {value!r}")
    if len(value) == 15:
        return value + _suffix(value)
    head, suffix = value[:15], value[15:].upper()
    if _suffix(head) != suffix and head in (head.lower(), head.upper()):
        restored = _case_from_suffix(head, suffix)
        if restored is not None:
            head = restored
    return head + suffix


def split_ids(values: Iterable[object]) -> tuple[list[str], list[object]]:
    """Valid ids (first occurrence order, duplicates dropped) and the rejected values."""
    valid: list[str] = []
    seen: set[str] = set()
    rejected: list[object] = []
    for value in values:
        if is_salesforce_id(value):
            assert isinstance(value, str)
            if value not in seen:
                seen.add(value)
                valid.append(value)
        else:
            rejected.append(value)
    return valid, rejected


def chunks(ids: list[str], size: int = MAX_IDS_PER_QUERY) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def field_list(fields: Iterable[str], required: Iterable[str]) -> list[str]:
    """Required fields first, then the others, each once (case-insensitively)."""
    result: list[str] = []
    seen: set[str] = set()
    for name in (*required, *fields):
        if not FIELD_PATTERN.match(name):
            raise CrmRejected(
                f"{name!r} is not a Salesforce field API name.",
                hint="use API names such as Account.Name or Seats__c in the mapping.",
            )
        if name.lower() not in seen:
            seen.add(name.lower())
            result.append(name)
    return result


def id_list(ids: Iterable[str]) -> str:
    quoted = []
    for value in ids:
        if not is_salesforce_id(value):
            raise ValueError(f"not a Salesforce id: {value!r}")
        quoted.append(f"'{value}'")
    return ", ".join(quoted)


def soql_datetime(value: datetime) -> str:
    """A SOQL dateTime literal (UTC, unquoted)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_salesforce_datetime(value: str) -> datetime:
    """Parses `2026-11-25T16:00:00.000+0000` (Salesforce) and ISO 8601 forms."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    match = re.match(r"^(.*[T ][0-9:.]+)([+-]\d{2})(\d{2})$", text)
    if match:
        text = f"{match.group(1)}{match.group(2)}:{match.group(3)}"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def without_currency(fields: Iterable[str]) -> list[str]:
    """The fields without the record's own `CurrencyIsoCode` (for single-currency orgs)."""
    return [name for name in fields if name.lower() != CURRENCY_FIELD.lower()]


def names_currency(fields: Iterable[str]) -> bool:
    return any(name.lower() == CURRENCY_FIELD.lower() for name in fields)


def opportunities_by_id(
    ids: list[str], opportunity_fields: Iterable[str], line_item_fields: Iterable[str]
) -> str:
    """One query for up to 200 opportunities with their line items as a subquery."""
    if not ids or len(ids) > MAX_IDS_PER_QUERY:
        raise ValueError(f"between 1 and {MAX_IDS_PER_QUERY} ids per query, got {len(ids)}")
    opp = field_list(opportunity_fields, REQUIRED_OPPORTUNITY_FIELDS)
    lines = field_list(line_item_fields, REQUIRED_LINE_FIELDS)
    return (
        f"SELECT {', '.join(opp)}, (SELECT {', '.join(lines)} FROM OpportunityLineItems) "
        f"FROM Opportunity WHERE Id IN ({id_list(ids)})"
    )


def won_among(ids: list[str]) -> str:
    """Which of these opportunities are won (a re-read for events that carry no values)."""
    if not ids or len(ids) > MAX_IDS_PER_QUERY:
        raise ValueError(f"between 1 and {MAX_IDS_PER_QUERY} ids per query, got {len(ids)}")
    return f"SELECT Id FROM Opportunity WHERE IsWon = true AND Id IN ({id_list(ids)})"


def won_state_among(ids: list[str]) -> str:
    """Whether these opportunities are won or deleted; for the QueryAll resource, which also
    returns soft-deleted records (`IsDeleted = true`, until the Recycle Bin is emptied)."""
    if not ids or len(ids) > MAX_IDS_PER_QUERY:
        raise ValueError(f"between 1 and {MAX_IDS_PER_QUERY} ids per query, got {len(ids)}")
    return f"SELECT Id, IsWon, IsDeleted FROM Opportunity WHERE Id IN ({id_list(ids)})"


def won_since(since: datetime | None, limit: int) -> str:
    """Won opportunities modified after `since`, oldest first."""
    where = "IsWon = true"
    if since is not None:
        where += f" AND LastModifiedDate > {soql_datetime(since)}"
    return (
        f"SELECT Id, LastModifiedDate FROM Opportunity WHERE {where} "
        f"ORDER BY LastModifiedDate ASC LIMIT {int(limit)}"
    )


def won_closed_since(day: date | None) -> str:
    """Won opportunities whose Close Date is on or after `day` (every won one when None).
    `CloseDate` is a date field: its literal is `YYYY-MM-DD`, unquoted."""
    where = "IsWon = true"
    if day is not None:
        where += f" AND CloseDate >= {day.isoformat()}"
    return f"SELECT Id FROM Opportunity WHERE {where} ORDER BY Id"

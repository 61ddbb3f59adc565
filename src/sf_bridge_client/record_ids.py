"""Salesforce record ids in the 18-character form sf-bridge keys customers by.

The client accepts an Account Id in either form (15 characters, case-sensitive, as URLs and
reports show it; or 18, case-insensitive, as the API returns it) and keys its cache by the
18-character form, so both forms share one entry. The rule is Salesforce's documented checksum:
each of the three extra characters records, for five of the first fifteen, which are upper
case. sf-bridge's own `sf_bridge.crm.soql.to_18` applies the same rule (a test holds the two to
the same answers); this copy keeps the client free of sf-bridge's server dependencies.
"""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
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


def to_18(value: str) -> str:
    """The 18-character form of a 15- or 18-character record id; an 18-character id whose
    case was folded as a whole gets back the case its suffix records."""
    if ID_PATTERN.match(value) is None:
        raise ValueError(f"not a Salesforce id: {value!r}")
    if len(value) == 15:
        return value + _suffix(value)
    head, suffix = value[:15], value[15:].upper()
    if _suffix(head) != suffix and head in (head.lower(), head.upper()):
        restored = _case_from_suffix(head, suffix)
        if restored is not None:
            head = restored
    return head + suffix


def maybe_record_id(value: str) -> str:
    """The 18-character form when `value` is a Salesforce id, else `value` unchanged (for
    references that may also be sf-bridge's own customer numbers)."""
    text = value.strip()
    return to_18(text) if ID_PATTERN.match(text) else text

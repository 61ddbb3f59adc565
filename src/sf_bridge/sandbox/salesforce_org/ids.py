"""Salesforce record ids: a 3-character key prefix, 12 characters, and for the 18-character form
a 3-character case-safe checksum suffix."""

from __future__ import annotations

import functools
import itertools
import re
import threading

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")

KEY_PREFIXES = {
    "Account": "001",
    "Contact": "003",
    "User": "005",
    "Opportunity": "006",
    "OpportunityLineItem": "00k",
    "OpportunityContactRole": "00K",
    "Organization": "00D",
    "PushTopic": "0IF",
    "Product2": "01t",
    "Pricebook2": "01s",
    "PricebookEntry": "01u",
    "QueryLocator": "01g",
}
POD = "8d"  # the two characters after the prefix name the instance, as on a real org


@functools.lru_cache(maxsize=65536)
def checksum_suffix(id15: str) -> str:
    """The 3 characters that make a 15-character id case-insensitively unique."""
    suffix = ""
    for chunk in range(3):
        bits = 0
        for position, char in enumerate(id15[chunk * 5 : chunk * 5 + 5]):
            if "A" <= char <= "Z":
                bits |= 1 << position
        suffix += _SUFFIX_ALPHABET[bits]
    return suffix


def to_18(record_id: str) -> str:
    """The 18-character form of a 15- or 18-character id."""
    if len(record_id) == 18:
        return record_id
    return record_id + checksum_suffix(record_id)


def is_valid_id(value: object) -> bool:
    """True for a well-formed 15- or 18-character id (18 only with a matching suffix)."""
    if not isinstance(value, str) or not _ID_PATTERN.match(value):
        return False
    return len(value) == 15 or checksum_suffix(value[:15]) == value[15:]


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        chars.append(_BASE62[rest])
    return "".join(reversed(chars))


class IdFactory:
    """Hands out unique 18-character ids per object type (thread-safe)."""

    def __init__(self, seed: int = 0) -> None:
        self._counter = itertools.count(seed + 1)
        self._lock = threading.Lock()

    def new_id(self, sobject: str) -> str:
        prefix = KEY_PREFIXES.get(sobject, "a00")
        with self._lock:
            number = next(self._counter)
        # Ids of one type sort in creation order, as a real org's mostly do.
        return to_18(prefix + POD + "000" + _base62(number, 7))

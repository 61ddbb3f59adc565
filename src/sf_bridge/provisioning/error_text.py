"""The error as written onto the Opportunity: its code first, then the message, shortened at
a word boundary to fit the field (Salesforce text fields hold 255 characters)."""

from __future__ import annotations

import re

FIELD_LENGTH = 255
# Said by the code already; the rest of the message is what differs between errors.
COMMON_PREFIXES = ("The deal does not map onto the catalog:",)
ELLIPSIS = "…"
LEADING_CODE = re.compile(r"^\[([a-z0-9_]+)\]\s*")


def split_code(code: str | None, message: str | None) -> tuple[str | None, str]:
    """The most specific code (a mapping error's own, `[unknown_product]`, over the step's
    `mapping`) and the message without it and without the words every such error starts with."""
    text = " ".join((message or "").split())
    for prefix in COMMON_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :].strip()
    match = LEADING_CODE.match(text)
    if match:
        code, text = match.group(1), text[match.end() :].strip()
    return code, text


def opportunity_error_text(code: str | None, message: str | None, limit: int = FIELD_LENGTH) -> str:
    """`unknown_product: line item ... Fix: ...`, at most `limit` characters, never cut
    inside a word (a word longer than the field is the only exception)."""
    code, text = split_code(code, message)
    full = f"{code}: {text}" if code and text else (code or text)
    if len(full) <= limit:
        return full
    room = limit - len(ELLIPSIS)
    cut = full[: room + 1]
    space = cut.rfind(" ")
    kept = len(code) + 2 if code and text else 0  # never the code alone
    head = cut[:space] if space > kept else full[:room]
    return head.rstrip(" ,;:.-(") + ELLIPSIS

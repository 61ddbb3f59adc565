"""The metadata sf-bridge attaches to Stripe objects, kept within Stripe's limits: at most 50
keys, keys of up to 40 characters without square brackets, values of up to 500 characters.
Stripe refuses a request that exceeds them (it never cuts), so a deal would park on a tag.

The keys are sf-bridge's own (`sf_account_id`, `sf_opportunity_id`, `sf_customer_key`,
`mapping_version`), so a key or a count over the limit is a defect and raises `ValueError`.
Values come from Salesforce: one longer than 500 characters (a customer identifier read from
a long text field) is shortened deliberately, see `metadata_value`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

MAX_KEYS = 50
MAX_KEY_LENGTH = 40
MAX_VALUE_LENGTH = 500
DIGEST_LENGTH = 16
SEPARATOR = "~sha256:"


def metadata_value(value: str) -> str:
    """`value` as sent to Stripe: unchanged up to 500 characters. A longer one keeps its
    beginning and ends with `~sha256:` and 16 hex digits of its SHA-256, 500 characters in
    all: the same value always gives the same text, and two values that differ only past the
    cut stay different (so a search by the tag finds the right object)."""
    if len(value) <= MAX_VALUE_LENGTH:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:DIGEST_LENGTH]
    keep = MAX_VALUE_LENGTH - len(SEPARATOR) - DIGEST_LENGTH
    return value[:keep] + SEPARATOR + digest


def stripe_metadata(values: Mapping[str, str]) -> dict[str, str]:
    """The metadata to send for `values`; raises `ValueError` for keys Stripe would refuse."""
    if len(values) > MAX_KEYS:
        raise ValueError(f"Stripe metadata takes at most {MAX_KEYS} keys; got {len(values)}.")
    for key in values:
        if len(key) > MAX_KEY_LENGTH or "[" in key or "]" in key:
            raise ValueError(
                f"Stripe metadata key {key!r} must be at most {MAX_KEY_LENGTH} characters "
                "without square brackets."
            )
    return {key: metadata_value(str(value)) for key, value in values.items()}


def shortened_keys(values: Mapping[str, str]) -> list[str]:
    """The keys whose values `stripe_metadata` shortens (for the log)."""
    return sorted(key for key, value in values.items() if len(str(value)) > MAX_VALUE_LENGTH)

"""sf-bridge's own deal and customer numbers, told apart from Salesforce ids."""

from __future__ import annotations

import pytest

from sf_bridge.crm import ids


@pytest.mark.parametrize(
    ("ref", "number"),
    [
        ("42", 42),
        (" 7 ", 7),
        (7, 7),
        ("12345678901234", 12345678901234),
        ("006000000000001", None),
        ("006Hs00001AcmeYQIA", None),
        ("abc", None),
        ("", None),
    ],
)
def test_a_reference_is_a_local_number_only_when_shorter_than_a_salesforce_id(
    ref: str | int, number: int | None
) -> None:
    assert ids.local_number(ref) == number

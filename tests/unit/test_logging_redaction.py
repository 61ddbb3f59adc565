"""Credentials in logged values are masked; other text is left as it is."""

from __future__ import annotations

import pytest

from sf_bridge.logging import REDACTED, redact_secrets, redact_text


@pytest.mark.parametrize(
    "secret",
    [
        "sk_test_abcdef123456",
        "rk_live_ZZZZZZ99",
        "whsec_abcdefgh",
        "00D000000000001!AQ0000000000000000000000.x",
        "Bearer abcdefgh.ijkl",
        "bearer abcdefgh.ijkl",
        "hooks.slack.com/services/T000/B000/XXXX",
    ],
)
def test_each_kind_of_credential_is_masked_inside_a_text(secret: str) -> None:
    text = redact_text(f"failed with {secret} here")
    assert secret not in text
    assert REDACTED in text
    assert text.startswith("failed with ")


def test_text_without_a_credential_is_returned_unchanged() -> None:
    text = "POST /v1/customers answered 200 for cus_123 (sk_ is only a prefix)"
    assert redact_text(text) == text


def test_secret_keys_and_nested_values_are_masked() -> None:
    event = redact_secrets(
        None,
        "info",
        {"event": "x", "api_key": "abc", "fields": {"note": "key sk_live_abcdef12", "n": 1}},
    )
    assert event["api_key"] == REDACTED
    assert event["fields"] == {"note": f"key {REDACTED}", "n": 1}

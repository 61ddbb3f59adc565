"""Stripe errors become sf-bridge errors at the gateway boundary."""

from __future__ import annotations

import stripe

from sf_bridge.billing.stripe_gateway import translate_error
from sf_bridge.errors import BillingRejected, RateLimitedError, TransientError
from sf_bridge.provisioning.retry import classify


def _body(message: str, code: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


def test_429_is_rate_limited_with_retry_after_and_request_id() -> None:
    exc = stripe.RateLimitError(
        "Too many requests",
        http_status=429,
        json_body=_body("Too many requests", "rate_limit"),
        headers={"Retry-After": "3", "request-id": "req_123"},
    )
    error = translate_error(exc, "create a customer")
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 3.0
    assert error.stripe_request_id == "req_123"  # type: ignore[attr-defined]
    assert classify(error).transient


def test_lock_timeout_is_transient() -> None:
    exc = stripe.RateLimitError(
        "lock", http_status=429, json_body=_body("lock", "lock_timeout"), code="lock_timeout"
    )
    assert isinstance(translate_error(exc, "create a subscription"), RateLimitedError)


def test_5xx_and_network_errors_are_transient() -> None:
    assert isinstance(
        translate_error(stripe.APIError("boom", http_status=500), "create a customer"),
        TransientError,
    )
    assert isinstance(
        translate_error(stripe.APIConnectionError("reset"), "create a customer"), TransientError
    )


def test_inactive_price_is_a_rejection_with_a_fix() -> None:
    exc = stripe.InvalidRequestError(
        "The price specified is inactive. This field only accepts active prices.",
        param="items[0][price]",
        http_status=400,
        json_body=_body("The price specified is inactive. This field only accepts active prices."),
    )
    error = translate_error(exc, "create a subscription")
    assert isinstance(error, BillingRejected)
    assert not classify(error).transient
    text = error.user_message()
    assert "items[0][price]" in text
    assert "inactive" in text
    assert "replay" in text


def test_bad_api_key_does_not_leak_the_key() -> None:
    exc = stripe.AuthenticationError(
        "Invalid API Key provided: sk_test_abcdefghijklmnop", http_status=401
    )
    error = translate_error(exc, "create a customer")
    assert isinstance(error, BillingRejected)
    assert "sk_test_abcdefghijklmnop" not in error.user_message()
    assert "STRIPE_API_KEY" in error.user_message()

"""Is a webhook delivery Stripe's, and signed now? The signature is checked by the stripe SDK;
the timestamp is checked here in both directions, because the SDK's check
(`WebhookSignature.verify_header`) only refuses timestamps too far in the past."""

from __future__ import annotations

import stripe


class TimestampOutsideTolerance(Exception):
    """The delivery is signed correctly, but at a time too far from this server's clock."""

    def __init__(self, skew_seconds: int, tolerance_seconds: int) -> None:
        self.skew_seconds = skew_seconds  # > 0: signed in our future; < 0: signed in our past
        self.tolerance_seconds = tolerance_seconds
        when = "ahead of" if skew_seconds > 0 else "behind"
        super().__init__(
            f"The Stripe-Signature timestamp is {abs(skew_seconds)} s {when} this server's "
            f"clock, outside the tolerance of {tolerance_seconds} s."
        )


def signed_at(header: str) -> int:
    """The `t=` timestamp of a Stripe-Signature header (`t=...,v1=...`)."""
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            return int(value)
    raise stripe.SignatureVerificationError("The Stripe-Signature has no timestamp", header)


def verify_delivery(
    payload: bytes, header: str, secret: str, tolerance_seconds: int, now: float
) -> None:
    """Raises `stripe.SignatureVerificationError` when the signature does not verify, then
    `TimestampOutsideTolerance` when it was signed more than `tolerance_seconds` before or
    after `now` (a replayed delivery, or a clock that is off)."""
    stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=None)
    skew = signed_at(header) - int(now)
    if abs(skew) > tolerance_seconds:
        raise TimestampOutsideTolerance(skew, tolerance_seconds)

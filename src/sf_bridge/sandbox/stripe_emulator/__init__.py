"""A stateful Stripe API emulator on loopback, held to Stripe's own object fixtures and the
`stripe` SDK's parameter types, with Stripe's idempotency, errors and switchable faults."""

from .emulator import DEFAULT_API_KEY, CatalogPrice, StripeEmulator
from .errors import StripeApiError
from .faults import FaultKind, Faults
from .stats import RequestRecord, StatsSnapshot
from .webhooks import DeliveryAttempt, WebhookEndpoint, sign

__all__ = [
    "DEFAULT_API_KEY",
    "CatalogPrice",
    "DeliveryAttempt",
    "FaultKind",
    "Faults",
    "RequestRecord",
    "StatsSnapshot",
    "StripeApiError",
    "StripeEmulator",
    "WebhookEndpoint",
    "sign",
]

"""What the entitlement API and usage metering refuse, each with a stable code and a hint."""

from __future__ import annotations

from sf_bridge.errors import SfBridgeError


class EntitlementError(SfBridgeError):
    """The entitlement request cannot be answered."""

    code = "entitlement_error"
    status_code = 400


class UnknownCustomer(EntitlementError):
    """No customer has this Salesforce Account id or sf-bridge customer id."""

    code = "unknown_customer"
    status_code = 404


class UnknownFeature(EntitlementError):
    """The customer has no active grant of this feature."""

    code = "unknown_feature"
    status_code = 404


class NotMetered(EntitlementError):
    """Usage is only counted for `limit` features; this feature is a flag or seats."""

    code = "not_metered"
    status_code = 422


class IdempotencyConflict(EntitlementError):
    """This idempotency key was already used for a different usage report."""

    code = "idempotency_conflict"
    status_code = 409

"""The HTTP service: entitlement API, usage, Stripe webhooks, health and metrics."""

from sf_bridge.api.app import create_app

__all__ = ["create_app"]

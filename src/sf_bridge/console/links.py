"""Links from a deal to its records: the Opportunity in Salesforce and the customer,
subscription and invoice in the Stripe Dashboard (test or live, from the API key's prefix)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

STRIPE_DASHBOARD = "https://dashboard.stripe.com"
LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")


def salesforce_instance(configured: str | None, snapshot: dict[str, Any] | None) -> str | None:
    """SF_INSTANCE_URL, else the origin of the snapshot's `attributes.url` when Salesforce gave
    an absolute one (the REST API usually gives a path, which names no host)."""
    if configured:
        return configured.rstrip("/")
    url = str(((snapshot or {}).get("attributes") or {}).get("url") or "")
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return None


def opportunity_url(instance: str | None, opportunity_id: str) -> str | None:
    """The Opportunity's record page in Lightning Experience."""
    if not instance:
        return None
    return f"{instance}/lightning/r/Opportunity/{opportunity_id}/view"


def stripe_live_mode(api_key: str | None) -> bool:
    """Live keys start sk_live_ / rk_live_; anything else is treated as test mode."""
    return bool(api_key) and str(api_key).startswith(LIVE_KEY_PREFIXES)


def stripe_url(kind: str, object_id: str | None, *, live: bool) -> str | None:
    """`kind` is customers, subscriptions or invoices."""
    if not object_id:
        return None
    return f"{STRIPE_DASHBOARD}{'' if live else '/test'}/{kind}/{object_id}"

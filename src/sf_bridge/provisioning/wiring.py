"""Builds the provisioning parts from settings: the rate-limited Stripe gateway, the mappings
loader (reloads when a mapping file changes, keeps the last good mappings when an edit does
not check clean), the Salesforce gateway when configured, and the
worker. Used by the CLI and by `sf-bridge run`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.billing.port import BillingGateway
from sf_bridge.billing.stripe_gateway import StripeGateway
from sf_bridge.config import Settings
from sf_bridge.crm.port import CrmGateway
from sf_bridge.mapping.live import LiveMappings
from sf_bridge.provisioning.ratelimit import TokenBucket
from sf_bridge.provisioning.retry import RetryPolicy, request_retrier
from sf_bridge.provisioning.worker import Worker


def build_billing(settings: Settings) -> BillingGateway | None:
    """The Stripe gateway, or None when STRIPE_API_KEY is not set (custom plans still work)."""
    if settings.stripe_api_key is None:
        return None
    bucket = TokenBucket(settings.stripe_max_requests_per_second)
    return StripeGateway(
        settings.stripe_api_key.get_secret_value(),
        api_base=settings.stripe_api_base,
        acquire=bucket.acquire,
        on_rate_limited=bucket.pause,
        retry=request_retrier(RetryPolicy.from_settings(settings)),
    )


def salesforce_configured(settings: Settings) -> bool:
    return bool(settings.sf_username or settings.sf_client_id)


def build_crm(settings: Settings, mappings_loader: Callable[[], Any]) -> CrmGateway | None:
    """The Salesforce gateway, or None when no Salesforce credentials are set."""
    if not salesforce_configured(settings):
        return None
    from sf_bridge.crm.salesforce import SalesforceCrm

    return SalesforceCrm.from_settings(settings, mappings_loader)


# The mappings folder for a process: reloaded when a file changes, keeping the last good
# mappings when an edit does not check clean (see sf_bridge.mapping.live).
MappingsLoader = LiveMappings


def build_worker(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    crm: CrmGateway | None = None,
    billing: BillingGateway | None = None,
    mappings_loader: Callable[[], Any] | None = None,
    **options: Any,
) -> Worker:
    loader = mappings_loader or MappingsLoader(settings.mappings_dir)
    return Worker(
        settings,
        session_factory,
        billing if billing is not None else build_billing(settings),
        crm,
        loader,
        **options,
    )

"""Builds the provisioning parts from settings: the rate-limited Stripe gateway, the mappings
loader (reloads when a mapping file changes), the Salesforce gateway when configured, and the
worker. Used by the CLI and by `sf-bridge run`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.billing.port import BillingGateway
from sf_bridge.billing.stripe_gateway import StripeGateway
from sf_bridge.config import Settings
from sf_bridge.crm.port import CrmGateway
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


class MappingsLoader:
    """Loads the mappings folder, again only when one of its files changed."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._stamp: tuple[tuple[str, float, int], ...] | None = None
        self._value: Any = None
        self._lock = threading.Lock()

    def _files_stamp(self) -> tuple[tuple[str, float, int], ...]:
        if not self.directory.is_dir():
            return ()
        return tuple(
            (p.name, p.stat().st_mtime, p.stat().st_size)
            for p in sorted(self.directory.iterdir())
            if p.is_file()
        )

    def __call__(self) -> Any:
        from sf_bridge.mapping import load_mappings

        with self._lock:
            stamp = self._files_stamp()
            if self._value is None or stamp != self._stamp:
                self._value = load_mappings(self.directory)
                self._stamp = stamp
            return self._value


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

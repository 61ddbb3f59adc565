"""Catalog prices by lookup key, resolved once and cached per process.

Only active prices are cached (for `ttl` seconds): an archived or missing price is looked up
again next time, so fixing the catalog and replaying works without a restart. A price Stripe
later refuses is dropped from the cache (`forget`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from sf_bridge.billing.port import BillingGateway, BillingPrice


class PriceCache:
    def __init__(self, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._prices: dict[str, tuple[float, BillingPrice]] = {}
        self._lock = threading.Lock()

    def resolve(
        self, billing: BillingGateway, lookup_keys: Sequence[str]
    ) -> dict[str, BillingPrice]:
        """Prices for the keys (active or not); keys Stripe does not know are absent."""
        now = self._clock()
        found: dict[str, BillingPrice] = {}
        with self._lock:
            for key in lookup_keys:
                cached = self._prices.get(key)
                if cached is not None and now - cached[0] < self._ttl:
                    found[key] = cached[1]
        missing = [k for k in dict.fromkeys(lookup_keys) if k not in found]
        if missing:
            fetched = billing.find_prices(missing)
            with self._lock:
                for key, price in fetched.items():
                    if price.active:
                        self._prices[key] = (now, price)
            found.update(fetched)
        return found

    def forget(self, lookup_keys: Sequence[str]) -> None:
        with self._lock:
            for key in lookup_keys:
                self._prices.pop(key, None)

"""`StripeEmulator`: a stateful Stripe API on loopback for tests, the demo and `sf-bridge
sandbox`. The real `stripe` SDK talks to it via `base_addresses={"api": emulator.url}`."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Protocol

from sf_bridge.logging import get_logger

from . import catalog, invoices, timeline, webhook_endpoints
from .clock import Clock
from .errors import StripeApiError
from .faults import FaultInjector, FaultKind, Faults
from .idempotency import IdempotencyStore
from .objects import clone
from .routes import ROUTES
from .server import EmulatorHTTPServer
from .stats import RequestRecord, Stats
from .store import SYSTEM, Store
from .webhooks import DEFAULT_RETRY_DELAYS, DeliveryAttempt, WebhookDispatcher, WebhookEndpoint

log = get_logger(__name__)

DEFAULT_API_KEY = "sk_test_sfbridgesandbox000000000000"
REQUEST_LOG_SIZE = 10_000


class CatalogPrice(Protocol):
    """What `seed_catalog` needs of each catalog entry (mapping catalog prices fit)."""

    @property
    def lookup_key(self) -> str: ...
    @property
    def product_name(self) -> str: ...
    @property
    def unit_amount(self) -> int: ...
    @property
    def currency(self) -> str: ...
    @property
    def interval(self) -> str: ...


class StripeEmulator:
    """Start with `start()` (or `with StripeEmulator() as emu:`), stop with `stop()`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        webhook_secret: str | None = None,
        now: Callable[[], float] | None = None,
        *,
        api_key: str = DEFAULT_API_KEY,
        webhook_retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.faults = faults or Faults()
        self.injector = FaultInjector(self.faults)
        self.webhook_secret = webhook_secret
        self.clock = Clock(now)
        self.store = Store(self.clock, search_lag=lambda: self.faults.search_lag_seconds)
        self.idempotency = IdempotencyStore(self.clock)
        self.stats = Stats()
        self.webhooks = WebhookDispatcher(webhook_retry_delays, on_delivered=self._delivered)
        self.store.listeners.append(self._publish)
        self._requests: deque[RequestRecord] = deque(maxlen=REQUEST_LOG_SIZE)
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------ lifecycle

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        """Replacing the faults keeps scripted faults (`fail_next`) and writes in flight."""
        self._faults = value
        if hasattr(self, "injector"):
            self.injector.configure(value)

    def start(self) -> StripeEmulator:
        if self._server is not None:
            return self
        self._server = EmulatorHTTPServer((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self.store.base_url = self.url
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"stripe-emulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.debug("stripe_emulator.started", url=self.url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.webhooks.stop()
        log.debug("stripe_emulator.stopped", url=self.url)

    def __enter__(self) -> StripeEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------------ inspection

    def objects(self, kind: str) -> list[dict[str, Any]]:
        """Every stored object of `kind`, oldest first (copies)."""
        return self.store.all(kind)

    def count(self, kind: str) -> int:
        return self.store.count(kind)

    def get(self, object_id: str) -> dict[str, Any]:
        """One stored object by id (a copy); KeyError when unknown."""
        with self.store.lock:
            for objects in self.store.objects.values():
                if object_id in objects:
                    return clone(objects[object_id])
        raise KeyError(object_id)

    def requests(self, route: str | None = None) -> list[RequestRecord]:
        """The last API requests (up to 10,000), oldest first; only `route`'s when given. Each
        has its method, route, path, status, Idempotency-Key and parameters as sent (`form`)."""
        return [r for r in list(self._requests) if route is None or r.route == route]

    def record_request(self, record: RequestRecord) -> None:
        self._requests.append(record)

    def fail_next(self, route: str, kind: FaultKind = "error", times: int = 1) -> None:
        """Scripts a fault for the next `times` requests of `route` ("POST /v1/subscriptions",
        "POST /v1/invoices/{id}/finalize"...): see `FaultKind` for what each kind does."""
        if not any(r.name == route for r in ROUTES):
            raise ValueError(f"no such route: {route!r}")
        self.injector.fail_next(route, kind, times)

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.objects("event") if type_ is None or e["type"] == type_]

    # ------------------------------------------------------------------------ set-up helpers

    def seed_catalog(self, prices: Iterable[CatalogPrice]) -> dict[str, str]:
        """Creates a product and an active recurring price per entry, keyed by lookup key;
        entries whose lookup key already exists are left alone. Returns lookup key -> price id."""
        result: dict[str, str] = {}
        with self.store.lock:
            for entry in prices:
                existing = [
                    p for p in self.store.objects["price"].values()
                    if p["lookup_key"] == entry.lookup_key
                ]  # fmt: skip
                if existing:
                    result[entry.lookup_key] = existing[0]["id"]
                    continue
                product = next(
                    (
                        p
                        for p in self.store.objects["product"].values()
                        if p["name"] == entry.product_name
                    ),
                    None,
                ) or catalog.create_product(self.store, {"name": entry.product_name}, SYSTEM)
                price = catalog.create_price(
                    self.store,
                    {
                        "product": product["id"],
                        "currency": entry.currency.lower(),
                        "unit_amount": int(entry.unit_amount),
                        "recurring": {"interval": entry.interval, "interval_count": 1},
                        "lookup_key": entry.lookup_key,
                    },
                    SYSTEM,
                )
                if product["default_price"] is None:
                    product["default_price"] = price["id"]
                result[entry.lookup_key] = price["id"]
        return result

    def archive_price(self, lookup_key: str) -> None:
        """Sets the price with `lookup_key` inactive, as archiving it in the dashboard does."""
        with self.store.lock:
            for price in self.store.objects["price"].values():
                if price["lookup_key"] == lookup_key:
                    catalog.update_price(self.store, price["id"], {"active": False}, SYSTEM)
                    return
        raise KeyError(lookup_key)

    def set_default_payment_method(self, customer_id: str, payment_method: str) -> None:
        """Gives a customer a card on file (e.g. `pm_card_visa`), so charge_automatically
        subscriptions are paid at once."""
        with self.store.lock:
            catalog.update_customer(
                self.store,
                customer_id,
                {"invoice_settings": {"default_payment_method": payment_method}},
                SYSTEM,
            )

    # ------------------------------------------------------------------------ time and payments

    def advance_clock(self, seconds: float) -> None:
        """Moves the emulator's time forward and lets Stripe's timed behaviour happen:
        drafts finalize an hour after creation, unpaid invoices past due emit
        `invoice.overdue` and make their subscription `past_due`."""
        self.clock.advance(seconds)
        self.tick()

    def tick(self) -> None:
        with self.store.lock:
            timeline.tick(self.store)

    def now(self) -> int:
        return self.clock()

    def pay_invoice(self, invoice_id: str) -> dict[str, Any]:
        """The customer pays an open invoice on its hosted page: `invoice.paid`."""
        with self.store.lock:
            invoice = self.store.get("invoice", invoice_id)
            if invoice["status"] == "draft":
                invoices.finalize_invoice(self.store, invoice_id, {}, SYSTEM)
            if invoice["status"] != "paid":
                invoices.pay_invoice(self.store, invoice_id, {"paid_out_of_band": True}, SYSTEM)
            return clone(invoice)

    def trigger_invoice_overdue(self, invoice_id: str) -> None:
        """Emits `invoice.overdue` for an open invoice now, whatever its due date."""
        with self.store.lock:
            invoice = self.store.get("invoice", invoice_id)
            if invoice["status"] != "open":
                raise StripeApiError.invalid_request(
                    f"Invoice {invoice_id} is {invoice['status']}, not open."
                )
            timeline.mark_overdue(self.store, invoice)

    def fail_invoice_payment(self, invoice_id: str) -> None:
        """A payment attempt on an open invoice fails: `invoice.payment_failed`."""
        with self.store.lock:
            invoice = self.store.get("invoice", invoice_id)
            invoice["attempt_count"] += 1
            invoice["attempted"] = True
            self.store.emit("invoice.payment_failed", invoice, SYSTEM)

    # ------------------------------------------------------------------------ webhooks

    def add_webhook_endpoint(
        self, url: str, secret: str | None = None, enabled_events: Iterable[str] = ("*",)
    ) -> WebhookEndpoint:
        """Registers an endpoint (as `POST /v1/webhook_endpoints` does) signed with `secret`
        (default: the emulator's `webhook_secret`)."""
        secret = secret or self.webhook_secret
        if not secret:
            raise ValueError("a webhook endpoint needs a signing secret (whsec_...)")
        params = {"url": url, "enabled_events": list(enabled_events)}
        with self.store.lock:
            created = webhook_endpoints.create_endpoint(self.store, params, SYSTEM, secret)
        return WebhookEndpoint(url, secret, tuple(params["enabled_events"]), created["id"])

    def webhook_attempts(self) -> list[DeliveryAttempt]:
        return list(self.webhooks.attempts)

    def wait_for_webhooks(self, timeout: float = 5.0) -> bool:
        """Waits until every event due for delivery has been attempted."""
        return self.webhooks.wait_idle(timeout)

    def _publish(self, event: dict[str, Any]) -> None:
        targets = webhook_endpoints.targets(self.store, event["type"])
        event["pending_webhooks"] = self.webhooks.publish(event, targets)

    def _delivered(self, event: dict[str, Any]) -> None:
        with self.store.lock:
            event["pending_webhooks"] = max(0, event["pending_webhooks"] - 1)

"""A stateful Stripe API emulator on loopback, held to Stripe's own object fixtures and the
`stripe` SDK's parameter types, with Stripe's idempotency, errors and switchable faults.

    from sf_bridge.sandbox.stripe_emulator import Faults, StripeEmulator

    with StripeEmulator(faults=Faults(latency_ms=100)) as emu:
        emu.seed_catalog(catalog_prices)          # products + prices by lookup key
        client = stripe.StripeClient(emu.api_key, base_addresses={"api": emu.url})
        ...
        emu.count("subscription"); emu.get(sub_id); emu.events("invoice.paid")
        [r.param("proration_behavior") for r in emu.requests("POST /v1/subscriptions/{id}")]

What it serves (form-encoded, exactly as the SDK sends it, `expand[]` honoured):
customers (create, retrieve, update, list, search), products and prices (create, retrieve,
update/archive, list by `lookup_keys[]`, search), subscriptions (create with `price` or
`price_data` items, retrieve, update, cancel, list, search), invoices (created with the
subscription; retrieve, list, lines, finalize, send, pay, void, mark uncollectible, update,
search), payments made outside Stripe (payment records reported and attached to an invoice;
an invoice's payments listed and retrieved), events (list, retrieve), webhook endpoints
(create, list, update, delete), and the hosted invoice page and PDF at `<url>/i/<invoice id>`
(`POST .../pay` is the customer paying).

Fidelity: every object carries every field of Stripe's fixture for its type; unknown or
mistyped parameters are refused with `invalid_request_error` naming `param`; idempotency keys
replay the first response (status included) for 24 h, refuse other parameters (400
`idempotency_error`) and concurrent use (409); errors have Stripe's JSON shape and every answer
a `Request-Id`. Time is the emulator's clock (`now=` or the wall clock, plus `advance_clock`):
drafts finalize an hour in, subscriptions renew each period, open invoices past due emit
`invoice.overdue` and make their subscription `past_due`, incomplete ones expire after 23 h.

Faults (`emu.faults`, change any time): `latency_ms` per request (slept in that request's
thread), `rate_limit_per_second` (429 `rate_limit`), `error_rate` (500 before the endpoint
runs), `drop_rate` with `drop_phase` (connection closed before or after processing),
`lock_timeout` (429 with `Stripe-Should-Retry: true` when two writes hit one customer), and
`search_lag_seconds` (search is eventually consistent). `emu.fail_next(route, kind)` scripts a
one-off fault for one route, including a 500 after the endpoint ran (saved under the key).

Request log (`emu.requests(route)`): the last 10,000 API requests, oldest first, each with its
method, route, path, status, Idempotency-Key, whether it was an idempotent replay, and its
parameters as sent (`form`, `param(name)`, `indices("phases")`).

Not modelled: taxes, discounts, coupons, trials, prorations, payment intents and payment
methods as objects (a customer's `invoice_settings.default_payment_method` is trusted, and
`pm_card_chargeCustomerFail` declines), Connect.
"""

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

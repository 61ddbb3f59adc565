"""All faults at once against clients that retry as the SDK and a careful caller do: with
deterministic idempotency keys nothing is created twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import stripe

from sf_bridge.sandbox.stripe_emulator import Faults, StripeEmulator
from tests.fixtures.stripe import SAMPLE_CATALOG

T = TypeVar("T")


def with_retries(call: Callable[[], T], attempts: int = 40) -> T:
    """Retries what the SDK leaves to its caller: 429s (rate limit, lock timeout), and
    connection or server errors that outlasted the SDK's own retries."""
    for attempt in range(attempts):
        try:
            return call()
        except (stripe.RateLimitError, stripe.APIConnectionError, stripe.APIError):
            time.sleep(min(0.2, 0.01 * 2**attempt))
    raise AssertionError("gave up")


def test_faulty_stripe_still_yields_exactly_one_of_everything(
    stripe_emulator: StripeEmulator,
) -> None:
    prices = stripe_emulator.seed_catalog(SAMPLE_CATALOG)
    stripe_emulator.faults = Faults(
        error_rate=0.2,
        rate_limit_per_second=60,
        drop_rate=0.05,
        latency_ms=5,
        lock_timeout=True,
        seed=11,
    )
    client = stripe.StripeClient(
        stripe_emulator.api_key,
        base_addresses={"api": stripe_emulator.url},
        max_network_retries=0,  # with_retries does it, with shorter pauses than the SDK's
    )
    accounts = [f"001ACCOUNT{n % 3}" for n in range(9)]  # three deals per account

    def provision(n: int) -> str:
        account, opportunity = accounts[n], f"006DEAL{n}"
        customer = with_retries(
            lambda: client.v1.customers.create(
                params={"name": account, "metadata": {"sf_account_id": account}},
                options={"idempotency_key": f"{account}:customer"},
            )
        )
        sub = with_retries(
            lambda: client.v1.subscriptions.create(
                params={
                    "customer": customer.id,
                    "items": [{"price": prices["pro_monthly"], "quantity": n + 1}],
                    "collection_method": "send_invoice",
                    "days_until_due": 30,
                    "metadata": {"sf_opportunity_id": opportunity},
                },
                options={"idempotency_key": f"{opportunity}:subscription"},
            )
        )
        invoice = with_retries(
            lambda: client.v1.invoices.finalize_invoice(
                str(sub.latest_invoice), options={"idempotency_key": f"{opportunity}:finalize"}
            )
        )
        return invoice.status

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(provision, range(len(accounts))))

    assert statuses == ["open"] * len(accounts)
    assert stripe_emulator.count("customer") == 3
    assert stripe_emulator.count("subscription") == len(accounts)
    assert stripe_emulator.count("invoice") == len(accounts)
    snapshot = stripe_emulator.stats.snapshot()
    assert snapshot.server_errors + snapshot.dropped > 0  # ~35 requests at 25% faults
    assert snapshot.total > 3 * len(accounts)

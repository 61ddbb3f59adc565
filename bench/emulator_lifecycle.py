"""The Stripe emulator's cost of changing a live subscription: a subscription update with
prorations and an invoice preview, each through the real SDK over loopback HTTP, on an
account holding `--subscriptions` other subscriptions (a preview copies and restores the
previewed customer's objects only, so its cost should not grow with the account).

    .venv/bin/python bench/emulator_lifecycle.py --subscriptions 200 --requests 50
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stripe

from sf_bridge.sandbox.stripe_emulator import Faults, StripeEmulator

CATALOG_PRICE = 9_900


def _timed(name: str, requests: int, call: Callable[[], Any]) -> None:
    started = time.perf_counter()
    for _ in range(requests):
        call()
    per_request = (time.perf_counter() - started) / requests * 1000
    print(f"{name:<34} {per_request:7.1f} ms per request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscriptions", type=int, default=200)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    emulator = StripeEmulator(faults=Faults(seed=1))
    emulator.start()
    try:
        client = stripe.StripeClient(
            emulator.api_key, base_addresses={"api": emulator.url}, max_network_retries=0
        )
        product = client.v1.products.create(params={"name": "Pro"})
        price = client.v1.prices.create(
            params={
                "product": product.id,
                "unit_amount": CATALOG_PRICE,
                "currency": "usd",
                "recurring": {"interval": "month"},
            }
        )
        subs = []
        for n in range(max(1, args.subscriptions)):
            customer = client.v1.customers.create(params={"name": f"Customer {n}"})
            subs.append(
                client.v1.subscriptions.create(
                    params={
                        "customer": customer.id,
                        "collection_method": "send_invoice",
                        "days_until_due": 30,
                        "items": [{"price": price.id, "quantity": 2}],
                    }
                )
            )
        sub = subs[0]
        item = sub["items"]["data"][0]["id"]
        print(f"{len(subs)} subscriptions, {args.requests} requests each")
        _timed(
            "update (create_prorations)",
            args.requests,
            lambda: client.v1.subscriptions.update(
                sub.id, params={"items": [{"id": item, "quantity": 3}]}
            ),
        )
        _timed(
            "create_preview (item change)",
            args.requests,
            lambda: client.v1.invoices.create_preview(
                params={
                    "subscription": sub.id,
                    "subscription_details": {"items": [{"id": item, "quantity": 4}]},
                }
            ),
        )
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()

"""Switchable faults: latency, rate limit, 500s, dropped connections, lock timeouts."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import stripe

from sf_bridge.sandbox.stripe_emulator import FaultKind, Faults, StripeEmulator
from tests.fixtures.stripe import SAMPLE_CATALOG, http_post, loopback_http


def _headers(emu: StripeEmulator, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {emu.api_key}"}
    if key:
        headers["Idempotency-Key"] = key
    return headers


def _wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_latency_is_per_request_and_does_not_serialise_requests(
    stripe_emulator: StripeEmulator,
) -> None:
    stripe_emulator.faults.latency_ms = 300
    clients = 12

    def call(_: int) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", stripe_emulator.port, timeout=10)
        try:
            started = time.perf_counter()
            conn.request("GET", "/v1/customers", headers=_headers(stripe_emulator))
            conn.getresponse().read()
            return time.perf_counter() - started
        finally:
            conn.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        durations = list(pool.map(call, range(clients)))
    wall = time.perf_counter() - started
    assert min(durations) >= 0.3
    # Serialised, twelve requests would need 3.6 s; concurrently they need about one latency.
    assert wall < 0.3 * clients / 3


def test_rate_limit_answers_429_above_the_rate(stripe_emulator: StripeEmulator) -> None:
    stripe_emulator.faults.rate_limit_per_second = 2  # a bucket of 2, refilled 2 a second
    with loopback_http(headers=_headers(stripe_emulator)) as http:
        statuses = [http.get(f"{stripe_emulator.url}/v1/customers").status_code for _ in range(20)]
        limited = next(
            r for r in (http.get(f"{stripe_emulator.url}/v1/customers") for _ in range(5))
            if r.status_code == 429
        )  # fmt: skip
    assert statuses[:2] == [200, 200]
    assert statuses.count(429) >= 10  # unless 20 requests took over 4 s
    error = limited.json()["error"]
    assert error["code"] == "rate_limit"
    assert error["type"] == "invalid_request_error"
    assert "Stripe-Should-Retry" not in limited.headers  # the SDK must not retry these itself
    assert stripe_emulator.stats.rate_limited >= 10


def test_rate_limit_429_surfaces_as_rate_limit_error(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    stripe_emulator.faults.rate_limit_per_second = 0.001  # the bucket holds one request
    stripe_client.v1.customers.list()
    with pytest.raises(stripe.RateLimitError) as caught:
        stripe_client.v1.customers.list()
    assert caught.value.http_status == 429


def test_error_rate_gives_that_share_of_500s_reproducibly() -> None:
    def run() -> list[int]:
        emu = StripeEmulator(faults=Faults(error_rate=0.3, seed=42))
        with emu, loopback_http(headers=_headers(emu)) as http:
            return [http.get(f"{emu.url}/v1/customers").status_code for _ in range(60)]

    first, second = run(), run()
    assert first == second
    share = first.count(500) / len(first)
    assert 0.15 < share < 0.45  # 0.3 +- 2.5 standard deviations for 60 draws


def test_injected_500_is_not_saved_under_the_idempotency_key(
    stripe_emulator: StripeEmulator,
) -> None:
    stripe_emulator.faults.error_rate = 1.0
    url = f"{stripe_emulator.url}/v1/customers"
    failed = http_post(url, data={"name": "Acme"}, headers=_headers(stripe_emulator, "k"))
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "api_error"
    stripe_emulator.faults.error_rate = 0.0
    ok = http_post(url, data={"name": "Acme"}, headers=_headers(stripe_emulator, "k"))
    assert ok.status_code == 200
    assert stripe_emulator.count("customer") == 1


def test_sdk_retries_500s_with_one_idempotency_key(stripe_emulator: StripeEmulator) -> None:
    stripe_emulator.faults.error_rate = 0.3
    stripe_emulator.faults.seed = 3
    client = stripe.StripeClient(
        stripe_emulator.api_key,
        base_addresses={"api": stripe_emulator.url},
        max_network_retries=10,
    )
    for n in range(4):
        client.v1.customers.create(params={"name": f"c{n}"})
    assert stripe_emulator.count("customer") == 4
    assert stripe_emulator.stats.server_errors > 0


def test_dropped_after_processing_then_retried_with_the_key_creates_one(
    stripe_emulator: StripeEmulator,
) -> None:
    stripe_emulator.faults.drop_rate = 1.0
    stripe_emulator.faults.drop_phase = "after"
    url = f"{stripe_emulator.url}/v1/customers"
    with pytest.raises(httpx.RemoteProtocolError):
        http_post(url, data={"name": "Acme"}, headers=_headers(stripe_emulator, "k"))
    assert stripe_emulator.count("customer") == 1  # processed, the answer lost
    stripe_emulator.faults.drop_rate = 0.0
    retried = http_post(url, data={"name": "Acme"}, headers=_headers(stripe_emulator, "k"))
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert stripe_emulator.count("customer") == 1
    assert stripe_emulator.stats.dropped == 1


def test_dropped_before_processing_creates_nothing(stripe_emulator: StripeEmulator) -> None:
    stripe_emulator.faults.drop_rate = 1.0
    stripe_emulator.faults.drop_phase = "before"
    client = stripe.StripeClient(
        stripe_emulator.api_key, base_addresses={"api": stripe_emulator.url}
    )
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create(params={"name": "Acme"})
    assert stripe_emulator.count("customer") == 0


def test_concurrent_writes_to_one_customer_get_lock_timeout(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    prices = stripe_emulator.seed_catalog(SAMPLE_CATALOG)
    customer = stripe_client.v1.customers.create(params={"name": "Acme"})
    stripe_emulator.faults.lock_timeout = True

    def subscribe() -> httpx.Response:
        return http_post(
            f"{stripe_emulator.url}/v1/subscriptions",
            data={
                "customer": customer.id,
                "items[0][price]": prices["pro_monthly"],
                "collection_method": "send_invoice",
                "days_until_due": "30",
            },
            headers=_headers(stripe_emulator),
        )

    stripe_emulator.faults.latency_ms = 1_000  # the first write holds the customer this long
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(subscribe)
        _wait_until(lambda: stripe_emulator.injector.writes_in_flight(customer.id) == 1)
        stripe_emulator.faults.latency_ms = 0
        refused = subscribe()
        assert first.result().status_code == 200
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "lock_timeout"
    assert refused.headers["Stripe-Should-Retry"] == "true"
    assert stripe_emulator.count("subscription") == 1
    assert subscribe().status_code == 200  # once the first is done, writes pass again


def test_concurrent_writes_to_different_customers_do_not_conflict(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    ids = [stripe_client.v1.customers.create(params={"name": f"c{i}"}).id for i in range(4)]
    stripe_emulator.faults.latency_ms = 200
    stripe_emulator.faults.lock_timeout = True

    def update(customer_id: str) -> int:
        return http_post(
            f"{stripe_emulator.url}/v1/customers/{customer_id}",
            data={"metadata[x]": "1"},
            headers=_headers(stripe_emulator),
        ).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(update, ids)) == [200] * 4


def test_concurrent_same_key_gets_409_while_the_first_runs(
    stripe_emulator: StripeEmulator,
) -> None:
    stripe_emulator.faults.latency_ms = 1_000

    def create() -> httpx.Response:
        return http_post(
            f"{stripe_emulator.url}/v1/customers",
            data={"name": "Acme"},
            headers=_headers(stripe_emulator, "same"),
        )

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(create)
        _wait_until(lambda: stripe_emulator.idempotency.in_progress("same"))
        stripe_emulator.faults.latency_ms = 0
        second = create()
        assert first.result().status_code == 200
    assert second.status_code == 409
    assert second.json()["error"]["type"] == "idempotency_error"
    assert stripe_emulator.count("customer") == 1


def test_stats_count_routes_and_reset(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    customer = stripe_client.v1.customers.create(params={"name": "Acme"})
    stripe_client.v1.customers.retrieve(customer.id)
    stripe_client.v1.customers.retrieve(customer.id)
    snapshot = stripe_emulator.stats.snapshot()
    assert snapshot.total == 3
    assert snapshot.by_route == {"POST /v1/customers": 1, "GET /v1/customers/{id}": 2}
    assert stripe_emulator.stats.count("GET /v1/customers/{id}") == 2
    stripe_emulator.stats.reset()
    assert stripe_emulator.stats.total == 0


def test_one_connection_is_not_held_up_by_delayed_acks(stripe_emulator: StripeEmulator) -> None:
    """Answers leave in one segment with TCP_NODELAY; otherwise each request on a keep-alive
    connection waits ~40 ms for the client's delayed ACK (under 25 requests/s)."""
    conn = http.client.HTTPConnection("127.0.0.1", stripe_emulator.port, timeout=10)
    try:
        started = time.perf_counter()
        for _ in range(60):
            conn.request("GET", "/v1/customers", headers=_headers(stripe_emulator))
            conn.getresponse().read()
        rate = 60 / (time.perf_counter() - started)
    finally:
        conn.close()
    assert rate > 40


def test_sustains_concurrent_clients(stripe_emulator: StripeEmulator) -> None:
    """Many keep-alive clients at once; the figure is printed for the record."""
    per_client, clients = 60, 8
    base = stripe_emulator.url

    def work(n: int) -> int:
        with loopback_http(headers=_headers(stripe_emulator)) as http:
            for i in range(per_client // 2):
                created = http.post(f"{base}/v1/customers", data={"name": f"{n}-{i}"})
                http.get(f"{base}/v1/customers/{created.json()['id']}")
        return per_client

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(work, range(clients)))
    rate = total / (time.perf_counter() - started)
    print(f"stripe emulator: {rate:.0f} requests/s from {clients} concurrent clients")
    assert stripe_emulator.count("customer") == total // 2
    assert stripe_emulator.stats.snapshot().by_status == {200: total}


def _subscribe_params(emu: StripeEmulator, client: stripe.StripeClient) -> dict[str, Any]:
    prices = emu.seed_catalog(SAMPLE_CATALOG)
    customer = client.v1.customers.create(params={"name": "Acme"})
    return {
        "customer": customer.id,
        "items": [{"price": prices["pro_monthly"]}],
        "collection_method": "send_invoice",
        "days_until_due": 30,
        "metadata": {"sf_opportunity_id": "006A"},
    }


def test_scripted_drop_after_processing_hits_only_that_route(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    params = _subscribe_params(stripe_emulator, stripe_client)
    stripe_emulator.fail_next("POST /v1/subscriptions", "drop_after")
    options: stripe.RequestOptions = {"idempotency_key": "sub-006A"}
    with pytest.raises(stripe.APIConnectionError):
        stripe_client.v1.subscriptions.create(params=params, options=options)  # type: ignore[arg-type]
    assert stripe_emulator.count("subscription") == 1  # created; the answer was lost
    again = stripe_client.v1.subscriptions.create(params=params, options=options)  # type: ignore[arg-type]
    assert again.id == stripe_emulator.objects("subscription")[0]["id"]
    assert stripe_emulator.count("subscription") == 1
    (dropped, replayed) = stripe_emulator.requests("POST /v1/subscriptions")
    assert (dropped.status, dropped.idempotency_key) == (None, "sub-006A")
    assert (replayed.status, replayed.replayed) == (200, True)


def test_scripted_error_after_processing_is_replayed_under_its_key(
    stripe_emulator: StripeEmulator, stripe_client: stripe.StripeClient
) -> None:
    """Stripe saves a 500 from an endpoint that ran: retrying the key gets the 500 again, and
    only a lookup (search by metadata, or list) finds what was created."""
    params = _subscribe_params(stripe_emulator, stripe_client)
    stripe_emulator.fail_next("POST /v1/subscriptions", "error_after")
    options: stripe.RequestOptions = {"idempotency_key": "sub-006A"}
    for _ in range(2):
        with pytest.raises(stripe.APIError) as caught:
            stripe_client.v1.subscriptions.create(params=params, options=options)  # type: ignore[arg-type]
        assert caught.value.http_status == 500
    assert stripe_emulator.count("subscription") == 1
    found = stripe_client.v1.subscriptions.search(
        params={"query": "metadata['sf_opportunity_id']:'006A'"}
    )
    assert len(found.data) == 1


@pytest.mark.parametrize(
    ("kind", "error", "created"),
    [
        ("error", stripe.APIError, 0),
        ("rate_limit", stripe.RateLimitError, 0),
        ("lock_timeout", stripe.RateLimitError, 0),
        ("drop_before", stripe.APIConnectionError, 0),
    ],
)
def test_scripted_faults_before_processing_create_nothing_and_pass(
    stripe_emulator: StripeEmulator,
    stripe_client: stripe.StripeClient,
    kind: FaultKind,
    error: type[Exception],
    created: int,
) -> None:
    params = _subscribe_params(stripe_emulator, stripe_client)
    stripe_emulator.fail_next("POST /v1/subscriptions", kind)
    options: stripe.RequestOptions = {"idempotency_key": "k"}
    with pytest.raises(error):
        stripe_client.v1.subscriptions.create(params=params, options=options)  # type: ignore[arg-type]
    assert stripe_emulator.count("subscription") == created
    stripe_client.v1.subscriptions.create(params=params, options=options)  # type: ignore[arg-type]
    assert stripe_emulator.count("subscription") == 1


def test_fail_next_refuses_unknown_routes(stripe_emulator: StripeEmulator) -> None:
    with pytest.raises(ValueError, match="no such route"):
        stripe_emulator.fail_next("POST /v1/unicorns")

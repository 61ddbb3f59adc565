"""Reduced drills (the full ones are scripts in bench/drills/): a worker subprocess killed
with SIGKILL mid-burst and restarted, and every fault at once on a small batch. Each asserts
that every deal is done and that the Stripe emulator holds exactly one customer, one
subscription and one invoice per deal. They check correctness, never speed."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
from bench.common import Stack, StackConfig

from sf_bridge.sandbox.stripe_emulator import Faults

pytestmark = pytest.mark.slow

LEASE_SECONDS = 5.0


def _stack(config: StackConfig) -> Iterator[Stack]:
    stack = Stack(config).start()
    try:
        yield stack
    finally:
        stack.stop()


def _assert_all_once(stack: Stack, deals: int) -> None:
    counts = stack.status_counts()
    assert counts["done"] == deals, (dict(counts), stack.workers[-1].log_tail(40))
    found = stack.duplicates()
    assert found["duplicate_customers"] == 0, found
    assert found["duplicate_subscriptions"] == 0, found
    assert found["duplicate_invoices"] == 0, found
    assert (found["customers"], found["subscriptions"], found["invoices"]) == (
        deals,
        deals,
        deals,
    ), found


@pytest.mark.parametrize("transport", ["cometd", "pubsub"])
def test_kill9_mid_burst_with_restarts_provisions_every_deal_once(transport: str) -> None:
    deals_n, kills = 40, 3
    rng = random.Random(20261125)
    config = StackConfig(
        name="drill-kill",
        transport=transport,
        long_poll_seconds=5.0,
        salesforce_latency_ms=10.0,
        stripe_faults=Faults(latency_ms=30.0, seed=5),
    )
    for stack in _stack(config):
        deals = stack.create_deals(deals_n)
        worker = stack.start_worker(lease_seconds=LEASE_SECONDS, SF_BRIDGE_DRILL_POLL="0.1")
        stack.wait_subscribed()
        stack.close(deals)
        for _ in range(kills):
            progress = stack.status_counts()
            deadline = time.monotonic() + 30
            # kill once this worker has moved some deals on: mid-burst, not mid-start-up
            while stack.status_counts() == progress and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.4))
            worker.kill9()
            worker = stack.start_worker(lease_seconds=LEASE_SECONDS, SF_BRIDGE_DRILL_POLL="0.1")
        stack.wait_settled(deals_n, timeout=90, interval=0.2)
        _assert_all_once(stack, deals_n)


def test_every_fault_at_once_provisions_every_deal_once() -> None:
    deals_n = 24
    config = StackConfig(
        name="drill-faults",
        long_poll_seconds=5.0,
        stripe_faults=Faults(error_rate=0.10, rate_limit_per_second=20.0, seed=11),
        worker_stripe_rps=40.0,  # above the limit: 429s happen
        extra_env={"SF_BRIDGE_STREAM_BACKOFF_MIN": "0.1", "SF_BRIDGE_STREAM_BACKOFF_MAX": "1"},
    )
    for stack in _stack(config):
        assert stack.org is not None
        assert stack.stripe is not None
        deals = stack.create_deals(deals_n)
        stack.start_worker(lease_seconds=LEASE_SECONDS, SF_BRIDGE_DRILL_POLL="0.1")
        stack.wait_subscribed()
        half = deals_n // 2
        stack.close(deals[:half])
        stack.org.forget_clients()  # 403::Unknown client on the next connect
        time.sleep(0.5)
        stack.org.expire_sessions()  # REST and streaming answer 401 until a new login
        stack.close(deals[half:])
        stack.wait_settled(deals_n, timeout=90, interval=0.2)
        _assert_all_once(stack, deals_n)
        stats = stack.stripe.stats.snapshot()
        assert stats.server_errors > 0


def test_a_request_cut_before_its_body_creates_nothing_in_the_emulator() -> None:
    """A worker killed between a POST's headers and its body must leave no object behind
    (and no idempotency key taken), as with Stripe; the kill drill depends on it."""
    import socket

    from sf_bridge.sandbox.stripe_emulator import StripeEmulator

    with StripeEmulator() as emulator:
        with socket.create_connection((emulator.host, emulator.port)) as sock:
            sock.sendall(
                b"POST /v1/customers HTTP/1.1\r\nHost: stripe\r\n"
                b"Authorization: Bearer " + emulator.api_key.encode() + b"\r\n"
                b"Idempotency-Key: cut-before-body\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 40\r\n\r\n"
            )
        time.sleep(0.5)  # what the server would do with the request, it has done by now
        assert emulator.count("customer") == 0

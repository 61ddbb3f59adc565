"""The Python client against the real service: cache, ETag revalidation, background refresh,
fallback when the service goes away, and buffered usage flushed once it is back."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.api import create_app
from sf_bridge.client import EntitlementClient, UsageRejected
from sf_bridge.plan import EntitlementValue
from tests.fixtures.api import (
    ACCOUNT_ID,
    API_KEY,
    STANDARD_ENTITLEMENTS,
    ApiServer,
    Clock,
    api_settings,
    free_port,
    seed_deal,
    serve_in_thread,
)


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_checks_come_from_the_cache_and_revalidate_with_etag(api_server: ApiServer) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    clock = FakeMonotonic()
    client = EntitlementClient(api_server.url, API_KEY, refresh_interval=30, clock=clock)
    first = client.check(ACCOUNT_ID, "sso")
    assert (first.access, first.source, first.known) == (True, "service", True)
    cached = client.check(ACCOUNT_ID, "api_calls")
    assert (cached.source, cached.limit, cached.remaining) == ("cache", 1000, 1000)
    assert client.stats.fetches == 1

    clock.now += 31  # older than the refresh interval, no background thread: revalidated
    assert client.check(ACCOUNT_ID, "sso").access is True
    assert (client.stats.fetches, client.stats.not_modified) == (1, 1)

    seed_deal(
        api_server.session_factory,
        (EntitlementValue("api_calls", "limit", 500, unit="calls/month"),),
        opportunity_id="006000000000002AAA",
        subscription_id="sub_test_2",
    )
    client.refresh()
    assert client.stats.fetches == 2
    assert client.check(ACCOUNT_ID, "api_calls").limit == 1500

    unknown = client.check(ACCOUNT_ID, "teleportation")
    assert (unknown.access, unknown.known) == (False, False)
    stranger = client.check("001999999999999ZZZ", "sso")
    assert (stranger.access, stranger.known, stranger.source) == (False, False, "service")
    assert "No customer" in (stranger.reason or "")
    client.close()


def test_background_refresh_picks_up_changes(api_server: ApiServer) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    with EntitlementClient(api_server.url, API_KEY, refresh_interval=0.05) as client:
        assert client.check(ACCOUNT_ID, "seats").limit == 25
        seed_deal(
            api_server.session_factory,
            (EntitlementValue("seats", "seats", 10),),
            opportunity_id="006000000000002AAA",
            subscription_id="sub_test_2",
        )
        _wait_for(lambda: client.check(ACCOUNT_ID, "seats").limit == 35)
        assert client.check(ACCOUNT_ID, "seats").source == "cache"


def test_usage_reports_update_the_cache_and_refusals_raise(api_server: ApiServer) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    client = EntitlementClient(api_server.url, API_KEY)
    client.check(ACCOUNT_ID, "api_calls")
    receipt = client.report_usage(ACCOUNT_ID, "api_calls", 998, idempotency_key="u-1")
    assert (receipt.buffered, receipt.recorded, receipt.remaining) == (False, True, 2)
    again = client.report_usage(ACCOUNT_ID, "api_calls", 998, idempotency_key="u-1")
    assert (again.recorded, again.used) == (False, 998)
    cached = client.check(ACCOUNT_ID, "api_calls")
    assert (cached.source, cached.used, cached.remaining) == ("cache", 998, 2)
    with pytest.raises(UsageRejected) as info:
        client.report_usage(ACCOUNT_ID, "sso", 1)
    assert info.value.code == "not_metered"
    client.close()


def test_cached_answers_outlive_an_outage_then_the_fallback_answers(
    db_url: str, session_factory: sessionmaker[Session], api_clock: Clock
) -> None:
    factory = session_factory
    seed_deal(factory, STANDARD_ENTITLEMENTS)
    clock = FakeMonotonic()
    port = free_port()
    client = EntitlementClient(
        f"http://127.0.0.1:{port}",
        API_KEY,
        refresh_interval=10,
        max_staleness=100,
        fallback={"sso": False},
        clock=clock,
    )
    with serve_in_thread(create_app(api_settings(db_url), factory, clock=api_clock), port=port):
        assert client.check(ACCOUNT_ID, "sso").source == "service"
    # The service is gone: the cached answer stands, flagged stale once it is old.
    clock.now += 50
    during = client.check(ACCOUNT_ID, "sso")
    assert (during.access, during.source, during.stale) == (True, "cache", True)
    clock.now += 100
    late = client.check(ACCOUNT_ID, "sso")
    assert (late.access, late.source, late.is_fallback) == (False, "fallback", True)
    client.close()


def test_usage_buffered_offline_is_flushed_once_when_the_service_returns(
    db_url: str, session_factory: sessionmaker[Session], api_clock: Clock, tmp_path: Path
) -> None:
    factory = session_factory
    seed_deal(factory, STANDARD_ENTITLEMENTS)
    api_clock.now = datetime.now(UTC)  # buffered reports carry the real time they happened
    port = free_port()
    buffer = tmp_path / "usage.jsonl"
    client = EntitlementClient(
        f"http://127.0.0.1:{port}", API_KEY, buffer_path=buffer, offline_retry_after=0.0
    )
    receipts = [client.report_usage(ACCOUNT_ID, "api_calls", n) for n in (5, 6, 7)]
    assert all(r.buffered for r in receipts)

    app = create_app(api_settings(db_url), factory, clock=api_clock)
    with serve_in_thread(app, port=port) as url:
        assert client.flush() == 3
        assert client.pending_usage == 0
        assert buffer.read_text() == ""
        # A crash after sending but before forgetting: the same keys again count nothing.
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            for receipt, n in zip(receipts, (5, 6, 7), strict=True):
                resent = http.post(
                    "/v1/usage",
                    json={
                        "customer": ACCOUNT_ID,
                        "feature": "api_calls",
                        "quantity": n,
                        "idempotency_key": receipt.idempotency_key,
                    },
                )
                assert resent.json()["recorded"] is False
            used = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/api_calls").json()["used"]
    assert used == 18
    client.close()

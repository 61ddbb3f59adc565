"""The emulator's small parts: search queries, the clock, idempotency, faults, signatures."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import stripe

from sf_bridge.sandbox.stripe_emulator import Faults, sign
from sf_bridge.sandbox.stripe_emulator.clock import Clock, add_interval
from sf_bridge.sandbox.stripe_emulator.errors import StripeApiError
from sf_bridge.sandbox.stripe_emulator.faults import FaultInjector
from sf_bridge.sandbox.stripe_emulator.idempotency import IdempotencyStore, fingerprint
from sf_bridge.sandbox.stripe_emulator.search import matcher

FIELDS = frozenset({"metadata", "email", "name", "status", "created"})
ACME = {
    "metadata": {"sf_account_id": "001A"},
    "email": "ap@acme.test",
    "name": "Acme Inc",
    "status": "active",
    "created": 100,
}


@pytest.mark.parametrize(
    ("query", "hit"),
    [
        ("metadata['sf_account_id']:'001A'", True),
        ('metadata["sf_account_id"]:"001A"', True),
        ("metadata['sf_account_id']:'001B'", False),
        ("-metadata['sf_account_id']:'001B'", True),
        ("name~'acme'", True),
        ("email:'ap@acme.test' AND status:'active'", True),
        ("email:'x' AND status:'active'", False),
        ("email:'x' OR status:'active'", True),
        ("created>50", True),
        ("created<=99", False),
    ],
)
def test_search_queries(query: str, hit: bool) -> None:
    assert matcher(query, FIELDS)(ACME) is hit


@pytest.mark.parametrize(
    "query",
    ["nonsense", "phone:'1'", "email:'a' AND name:'b' OR status:'c'"],
)
def test_bad_search_queries_are_400(query: str) -> None:
    with pytest.raises(StripeApiError) as caught:
        matcher(query, FIELDS)
    assert caught.value.param == "query"


def _ts(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())  # type: ignore[misc]


@pytest.mark.parametrize(
    ("start", "interval", "count", "end"),
    [
        (_ts(2026, 1, 31), "month", 1, _ts(2026, 2, 28)),
        (_ts(2028, 1, 31), "month", 1, _ts(2028, 2, 29)),
        (_ts(2026, 11, 15), "month", 3, _ts(2027, 2, 15)),
        (_ts(2026, 3, 1), "year", 1, _ts(2027, 3, 1)),
        (_ts(2026, 3, 1), "week", 2, _ts(2026, 3, 15)),
        (_ts(2026, 3, 1), "day", 1, _ts(2026, 3, 2)),
    ],
)
def test_add_interval(start: int, interval: str, count: int, end: int) -> None:
    assert add_interval(start, interval, count) == end


def test_clock_advances_on_top_of_its_source() -> None:
    source = [1000.0]
    clock = Clock(lambda: source[0])
    clock.advance(50)
    source[0] += 5
    assert clock() == 1055
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


def test_idempotency_store_reserves_finishes_and_expires() -> None:
    now = [0]
    store = IdempotencyStore(lambda: now[0])
    fp = fingerprint("POST", "/v1/customers", "name=a&email=b")
    assert fp == fingerprint("POST", "/v1/customers", "email=b&name=a")
    assert fp != fingerprint("POST", "/v1/customers", "name=a")
    assert store.begin("k", fp, "req_1") is None
    running = store.begin("k", fp, "req_2")
    assert running is not None
    assert running.status is None
    assert store.in_progress("k")
    store.finish("k", 200, b"{}", {})
    saved = store.begin("k", fp, "req_3")
    assert saved is not None
    assert saved.status == 200
    assert saved.request_id == "req_1"
    now[0] = 24 * 3600
    assert store.begin("k", fp, "req_4") is None  # expired: a new request


def test_idempotency_release_forgets_unfinished_keys_only() -> None:
    store = IdempotencyStore(lambda: 0)
    store.begin("a", "fp", "req_1")
    store.release("a")
    assert store.begin("a", "fp", "req_2") is None
    store.finish("a", 201, b"", {})
    store.release("a")
    assert store.begin("a", "fp", "req_3") is not None


def test_token_bucket_admits_the_rate() -> None:
    injector = FaultInjector(Faults(rate_limit_per_second=3))
    assert [injector.admit() for _ in range(5)] == [True, True, True, False, False]
    injector.faults.rate_limit_per_second = None
    assert injector.admit()


def test_seeded_faults_repeat() -> None:
    def rolls() -> list[bool]:
        injector = FaultInjector(Faults(error_rate=0.5, seed=9))
        return [injector.should_fail() for _ in range(50)]

    assert rolls() == rolls()
    assert 10 < sum(rolls()) < 40


def test_writing_flags_a_second_concurrent_write_only_with_lock_timeout() -> None:
    injector = FaultInjector(Faults(lock_timeout=True))
    with (
        injector.writing("cus_1") as first,
        injector.writing("cus_1") as second,
        injector.writing("cus_2") as other,
    ):
        assert (first, second, other) == (True, False, True)
    with injector.writing("cus_1") as again:
        assert again
    injector.faults.lock_timeout = False
    with injector.writing("cus_1"), injector.writing("cus_1") as allowed:
        assert allowed


def test_signature_is_what_the_sdk_verifies() -> None:
    payload = json.dumps({"id": "evt_1", "object": "event", "type": "customer.created"})
    header = sign(payload.encode(), "whsec_abc", int(datetime.now(tz=UTC).timestamp()))
    event = stripe.Webhook.construct_event(payload, header, "whsec_abc")
    assert event.id == "evt_1"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, "whsec_other")


def test_new_fault_settings_keep_scripted_faults() -> None:
    injector = FaultInjector(Faults())
    injector.fail_next("POST /v1/customers", "error", times=2)
    injector.configure(Faults(error_rate=0.0, seed=1))
    assert injector.take_scripted("GET /v1/customers") is None
    assert injector.take_scripted("POST /v1/customers") == "error"
    assert injector.take_scripted("POST /v1/customers") == "error"
    assert injector.take_scripted("POST /v1/customers") is None

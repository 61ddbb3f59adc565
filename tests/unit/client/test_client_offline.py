"""The client with no service to reach: fallback answers and usage kept for later."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sf_bridge.client import EntitlementClient
from tests.fixtures.api import free_port

CUSTOMER = "001000000000001AAA"


def _unreachable(**kwargs: object) -> EntitlementClient:
    return EntitlementClient(f"http://127.0.0.1:{free_port()}", "key", timeout=1.0, **kwargs)  # type: ignore[arg-type]


def test_checks_answer_from_the_fallback_and_say_so() -> None:
    client = _unreachable(fallback={"sso": True, "api_calls": 0})
    sso = client.check(CUSTOMER, "sso")
    assert (sso.access, sso.source, sso.is_fallback, sso.known) == (True, "fallback", True, False)
    assert "unreachable" in (sso.reason or "")
    assert client.check(CUSTOMER, "api_calls").access is False
    assert client.check(CUSTOMER, "unlisted").access is False
    # Once the service is known to be down, checks do not wait on it again.
    assert client.stats.failures == 1
    everything = client.get_entitlements(CUSTOMER)
    assert everything.source == "fallback"
    assert set(everything.features) == {"sso", "api_calls"}
    client.close()


def test_a_callable_fallback_decides_per_customer_and_feature() -> None:
    client = _unreachable(fallback=lambda customer, feature: feature.startswith("basic_"))
    assert client.check(CUSTOMER, "basic_reports").access is True
    assert client.check(CUSTOMER, "sso").access is False
    client.close()


def test_usage_is_kept_in_order_and_survives_a_restart(tmp_path: Path) -> None:
    buffer = tmp_path / "usage.jsonl"
    client = _unreachable(buffer_path=buffer)
    first = client.report_usage(CUSTOMER, "api_calls", 3, idempotency_key="k-1")
    second = client.report_usage(CUSTOMER, "api_calls", 4)
    assert (first.buffered, second.buffered) == (True, True)
    assert client.pending_usage == 2
    client.close()  # the service is still down: nothing is lost

    lines = [json.loads(line) for line in buffer.read_text().splitlines()]
    assert [(r["idempotency_key"], r["quantity"]) for r in lines] == [
        ("k-1", 3),
        (second.idempotency_key, 4),
    ]
    restarted = _unreachable(buffer_path=buffer)
    assert restarted.pending_usage == 2
    assert restarted.flush() == 0
    assert restarted.pending_usage == 2
    restarted.close()


def test_the_buffer_is_bounded_and_negative_usage_is_refused() -> None:
    client = _unreachable(max_buffered=2)
    for n in range(3):
        client.report_usage(CUSTOMER, "api_calls", 1, idempotency_key=f"k-{n}")
    assert client.pending_usage == 2
    assert client.stats.dropped == 1
    with pytest.raises(ValueError, match="zero or more"):
        client.report_usage(CUSTOMER, "api_calls", -1)
    client.close()

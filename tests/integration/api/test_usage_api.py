"""POST /v1/usage: idempotent, counted per calendar period, no lost increments under load."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from sf_bridge.api import create_app
from sf_bridge.db.engine import make_engine, make_session_factory
from tests.fixtures.api import (
    ACCOUNT_ID,
    API_KEY,
    STANDARD_ENTITLEMENTS,
    ApiServer,
    Clock,
    api_settings,
    seed_deal,
    serve_in_thread,
)


def _report(http: httpx.Client, key: str, quantity: int = 1, **extra: object) -> httpx.Response:
    return http.post(
        "/v1/usage",
        json={
            "customer": ACCOUNT_ID,
            "feature": "api_calls",
            "quantity": quantity,
            "idempotency_key": key,
            **extra,
        },
    )


def test_usage_is_counted_once_per_idempotency_key(
    api_server: ApiServer, http: httpx.Client
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    first = _report(http, "batch-1", 40)
    assert first.status_code == 201
    assert first.json() | {"customer": None} == {
        "customer": None,
        "feature": "api_calls",
        "recorded": True,
        "period": {
            "name": "month",
            "key": "2026-11",
            "start": "2026-11-01T00:00:00+00:00",
            "end": "2026-12-01T00:00:00+00:00",
        },
        "used": 40,
        "limit": 1000,
        "remaining": 960,
        "over_limit": False,
    }
    again = _report(http, "batch-1", 40)
    assert again.status_code == 200
    assert (again.json()["recorded"], again.json()["used"]) == (False, 40)

    conflict = _report(http, "batch-1", 41)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"

    assert _report(http, "batch-2", 2).json()["used"] == 42


def test_counts_reset_each_calendar_period_and_late_reports_count_in_theirs(
    api_server: ApiServer, http: httpx.Client
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    assert _report(http, "nov-1", 990).json()["remaining"] == 10
    over = _report(http, "nov-2", 20).json()
    assert (over["used"], over["remaining"], over["over_limit"]) == (1010, 0, True)
    check = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/api_calls").json()
    assert (check["access"], check["remaining"]) == (False, 0)

    api_server.clock.advance(days=6)  # 2026-12-01 12:00
    december = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/api_calls").json()
    assert (december["period"]["key"], december["used"], december["access"]) == (
        "2026-12",
        0,
        True,
    )
    # A report buffered offline and sent late counts in the period it happened in.
    late = _report(http, "nov-3", 5, occurred_at="2026-11-30T23:59:00Z").json()
    assert (late["period"]["key"], late["used"]) == ("2026-11", 1015)
    assert _report(http, "dec-1", 3).json()["used"] == 3


def test_bad_usage_reports_are_refused_with_a_clear_body(
    api_server: ApiServer, http: httpx.Client
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    negative = _report(http, "neg", -5)
    assert negative.status_code == 422
    error = negative.json()["error"]
    assert error["code"] == "invalid_usage_report"
    assert "quantity" in error["message"]
    assert error["details"][0]["field"] == "quantity"

    not_a_number = _report(http, "str", "12")  # type: ignore[arg-type]
    assert not_a_number.status_code == 422

    unknown_feature = http.post(
        "/v1/usage",
        json={"customer": ACCOUNT_ID, "feature": "warp", "quantity": 1, "idempotency_key": "x"},
    )
    assert unknown_feature.status_code == 404
    assert unknown_feature.json()["error"]["code"] == "unknown_feature"

    flag = http.post(
        "/v1/usage",
        json={"customer": ACCOUNT_ID, "feature": "sso", "quantity": 1, "idempotency_key": "y"},
    )
    assert flag.status_code == 422
    assert flag.json()["error"]["code"] == "not_metered"

    missing_key = http.post(
        "/v1/usage", json={"customer": ACCOUNT_ID, "feature": "api_calls", "quantity": 1}
    )
    assert missing_key.status_code == 422
    assert "idempotency_key" in missing_key.json()["error"]["message"]

    not_json = http.post("/v1/usage", content=b"quantity=1", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 422

    future = _report(http, "future", 1, occurred_at="2027-01-01T00:00:00Z")
    assert future.status_code == 422
    assert future.json()["error"]["code"] == "usage_in_future"


def test_huge_payloads_are_refused_with_413(api_server: ApiServer, http: httpx.Client) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    huge = b'{"customer": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = http.post("/v1/usage", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"

    def chunks() -> object:
        for _ in range(160):
            yield b"y" * 16384

    streamed = http.post("/v1/usage", content=chunks())  # chunked: no Content-Length
    assert streamed.status_code == 413


def test_parallel_clients_of_two_replicas_never_lose_increments(
    api_server: ApiServer, db_url: str, api_clock: Clock
) -> None:
    seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    engine = make_engine(db_url)
    replica = create_app(api_settings(db_url), make_session_factory(engine), clock=api_clock)
    clients, reports_each = 8, 12
    with serve_in_thread(replica) as replica_url:
        urls = [api_server.url, replica_url]

        def run(worker: int) -> list[int]:
            headers = {"Authorization": f"Bearer {API_KEY}"}
            with httpx.Client(base_url=urls[worker % 2], headers=headers, timeout=30) as client:
                codes = []
                for n in range(reports_each):
                    # Every report is sent twice: the retry must not count.
                    for _ in range(2):
                        codes.append(_report(client, f"w{worker}-{n}", 3).status_code)
                return codes

        with ThreadPoolExecutor(clients) as pool:
            codes = [c for result in pool.map(run, range(clients)) for c in result]
    engine.dispose()
    assert codes.count(201) == clients * reports_each
    assert codes.count(200) == clients * reports_each
    with api_server.client() as client:
        check = client.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/api_calls").json()
    assert check["used"] == clients * reports_each * 3

"""/healthz, /readyz and /metrics."""

from __future__ import annotations

import httpx
from sqlalchemy import text

from sf_bridge.api import create_app
from sf_bridge.db.engine import make_engine, make_session_factory
from sf_bridge.db.models import StepAttempt, StreamCheckpoint, utcnow
from tests.fixtures.api import (
    ACCOUNT_ID,
    STANDARD_ENTITLEMENTS,
    ApiServer,
    api_settings,
    seed_deal,
    serve_in_thread,
)


def test_healthz_and_readyz_with_the_worker_stream(
    api_server: ApiServer, http: httpx.Client
) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["database"]["ok"]
    assert checks["schema"]["ok"]
    assert "stream" not in checks  # no worker has reported a stream

    channel = "status:/data/OpportunityChangeEvent"
    api_server.clock.now = utcnow()  # rows are stamped with the real time when written
    with api_server.session_factory() as session, session.begin():
        session.add(StreamCheckpoint(name=channel, value="reconnecting: 403::Unknown client"))
    down = http.get("/readyz")
    assert down.status_code == 503
    assert down.json()["checks"]["stream"]["channels"][0]["status"].startswith("reconnecting")

    for value, ready in [("connected", 200), ("stopped", 200), ("connecting", 503)]:
        with api_server.session_factory() as session, session.begin():
            row = session.get(StreamCheckpoint, channel)
            assert row is not None
            row.value = value
        assert http.get("/readyz").status_code == ready, value

    # No heartbeat for minutes: no worker holds the stream; this process is still ready.
    api_server.clock.advance(minutes=5)
    stale = http.get("/readyz")
    assert stale.status_code == 200, stale.text
    assert stale.json()["checks"]["stream"]["channels"][0]["stale"] is True


def test_readyz_refuses_an_out_of_date_schema(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    app = create_app(api_settings(sqlite_url), make_session_factory(engine))
    with serve_in_thread(app) as url:
        response = httpx.get(f"{url}/readyz")
    engine.dispose()
    assert response.status_code == 503
    schema = response.json()["checks"]["schema"]
    assert (schema["ok"], schema["revision"]) == (False, "0001")
    assert "sf-bridge db upgrade" in schema["hint"]


def test_metrics_show_deals_steps_and_this_process_counters(
    api_server: ApiServer, http: httpx.Client
) -> None:
    _, deal_id = seed_deal(api_server.session_factory, STANDARD_ENTITLEMENTS)
    with api_server.session_factory() as session, session.begin():
        for step, duration_ms, outcome in [
            ("customer", 80, "ok"),
            ("subscription", 300, "retry"),
            ("subscription", 700, "ok"),
        ]:
            session.add(
                StepAttempt(
                    deal_id=deal_id, step=step, attempt=1, duration_ms=duration_ms, outcome=outcome
                )
            )
    http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/sso")
    http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/nothing")
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = set(response.text.splitlines())
    assert 'sf_bridge_deals{status="done"} 1.0' in lines
    assert 'sf_bridge_deals{status="needs_attention"} 0.0' in lines
    assert 'sf_bridge_step_duration_seconds_bucket{le="0.1",step="customer"} 1.0' in lines
    assert 'sf_bridge_step_duration_seconds_bucket{le="0.5",step="subscription"} 1.0' in lines
    assert 'sf_bridge_step_duration_seconds_bucket{le="+Inf",step="subscription"} 2.0' in lines
    assert 'sf_bridge_step_duration_seconds_sum{step="subscription"} 1.0' in lines
    assert 'sf_bridge_step_attempts_total{outcome="retry",step="subscription"} 1.0' in lines
    assert "sf_bridge_metrics_database_up 1.0" in lines
    assert any(
        line.startswith('sf_bridge_http_request_seconds_count{route="entitlement"}')
        for line in lines
    )
    checks = [line for line in lines if line.startswith("sf_bridge_entitlement_checks_total")]
    assert any('result="granted"' in line for line in checks)
    assert any('result="unknown"' in line for line in checks)


def test_readyz_answers_while_the_worker_holds_a_write_transaction(sqlite_url: str) -> None:
    """The readiness checks only read: on SQLite they never wait for the write lock (a probe
    that waited behind the worker's writes would take the replica out of service)."""
    engine = make_engine(sqlite_url)
    app = create_app(api_settings(sqlite_url), make_session_factory(engine))
    with serve_in_thread(app) as url, engine.begin() as writer:
        writer.execute(text("UPDATE alembic_version SET version_num = version_num"))
        response = httpx.get(f"{url}/readyz", timeout=10.0)
    engine.dispose()
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["database"]["ok"]

"""`sf-bridge run` runs the alert pass in its own thread when a channel is configured, and
starts without it (and without complaint) when none is."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sf_bridge.config import Settings
from sf_bridge.db.engine import make_engine, make_session_factory, transaction
from sf_bridge.db.models import Deal
from sf_bridge.worker_process import RunOptions, WorkerProcess

from .conftest import HttpReceiver

MAPPINGS = Path(__file__).resolve().parents[3] / "mappings"
OPP = "006000000000009AAA"


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.02)


def settings_for(url: str, **alerts: str) -> Settings:
    settings = Settings(  # type: ignore[call-arg]
        DATABASE_URL=url,
        SF_BRIDGE_MAPPINGS=str(MAPPINGS),
        SF_BRIDGE_ALERT_INTERVAL="0.05",
        **alerts,
    )
    return settings.model_copy(update={"sf_username": None, "sf_client_id": None})


def test_the_worker_notifies_a_parked_deal(sqlite_url: str, http_receiver: HttpReceiver) -> None:
    engine = make_engine(sqlite_url)
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        session.add(
            Deal(
                opportunity_id=OPP,
                status="needs_attention",
                current_step="map",
                attempts=1,
                last_error="[unknown_product] No product ACME-XYZ. Fix: add it to products:",
                last_error_code="mapping",
                opportunity={"Id": OPP, "Name": "Globex renewal", "Account": {"Name": "Globex"}},
            )
        )
    engine.dispose()
    settings = settings_for(
        sqlite_url, SF_BRIDGE_ALERT_WEBHOOK_URL=http_receiver.url + "/hooks/oncall"
    )
    process = WorkerProcess(
        settings, RunOptions(overdue_interval_seconds=60, salesforce=False)
    ).start()
    try:
        assert "sf-bridge-alerts" in {t.name for t in process.threads}
        wait_for(lambda: http_receiver.to("/hooks/"), 10, "the notice")
    finally:
        assert process.stop()
    [hook] = http_receiver.to("/hooks/")
    assert hook.body["deal"]["opportunity_name"] == "Globex renewal"
    assert hook.body["deal"]["account_name"] == "Globex"
    assert hook.body["fix"]["command"] == f"sf-bridge replay {OPP}"


def test_without_a_channel_the_worker_runs_no_alert_thread(sqlite_url: str) -> None:
    process = WorkerProcess(
        settings_for(sqlite_url), RunOptions(overdue_interval_seconds=60, salesforce=False)
    )
    process.start()
    try:
        assert process.alerts is None
        assert "sf-bridge-alerts" not in {t.name for t in process.threads}
    finally:
        assert process.stop()

"""`sf-bridge run` start-up and shutdown."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

from sf_bridge.cli import app
from sf_bridge.config import Settings
from sf_bridge.worker_process import RunOptions, WorkerProcess
from tests.integration.intake.conftest import wait_until

MAPPINGS = Path(__file__).resolve().parents[3] / "mappings"


def test_run_refuses_an_out_of_date_schema(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    create_engine(url).dispose()
    result = CliRunner().invoke(app, ["run", "--database-url", url], env={"SF_USERNAME": ""})
    assert result.exit_code == 2
    assert "sf-bridge db upgrade" in result.output


def test_without_salesforce_credentials_only_provisioning_runs_and_stops_at_once(
    sqlite_url: str,
):
    settings = Settings(DATABASE_URL=sqlite_url, SF_BRIDGE_MAPPINGS=str(MAPPINGS))  # type: ignore[call-arg]
    settings = settings.model_copy(update={"sf_username": None, "sf_client_id": None})
    process = WorkerProcess(
        settings, RunOptions(overdue_interval_seconds=0.1, salesforce=False)
    ).start()
    assert process.intake is None
    assert {t.name for t in process.threads} >= {"sf-bridge-provisioning"}
    started = time.monotonic()
    assert process.stop()
    assert time.monotonic() - started < 5
    assert not any(t.is_alive() for t in process.threads)


def test_overdue_policy_runs_on_its_schedule_with_the_mapping_write_back_fields(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
):
    from sf_bridge.invoices import overdue

    calls: list[dict[str, Any]] = []

    def record(session_factory: Any, billing: Any, crm: Any, **kwargs: Any) -> list[Any]:
        calls.append(kwargs)
        return []

    monkeypatch.setattr(overdue, "apply_overdue_policy", record)
    settings = Settings(DATABASE_URL=sqlite_url, SF_BRIDGE_MAPPINGS=str(MAPPINGS))  # type: ignore[call-arg]
    settings = settings.model_copy(
        update={"sf_username": None, "sf_client_id": None, "overdue_grace_days": 9}
    )
    process = WorkerProcess(
        settings, RunOptions(overdue_interval_seconds=0.05, salesforce=False)
    ).start()
    try:
        wait_until(lambda: len(calls) >= 2, 10, "two overdue runs")
    finally:
        assert process.stop()
    assert calls[0]["grace_days"] == 9
    assert calls[0]["dry_run"] is False
    assert calls[0]["write_back"].status == "SF_Bridge_Status__c"


def test_worker_metrics_port_serves_stripe_request_counts(
    sqlite_url: str, stripe_emulator: Any
) -> None:
    """`sf-bridge run` has no HTTP API: SF_BRIDGE_WORKER_METRICS_PORT serves its request
    counters, which move with each Stripe call the worker's gateway makes."""
    import socket
    import urllib.request

    from sf_bridge.billing.stripe_gateway import StripeGateway

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(DATABASE_URL=sqlite_url, SF_BRIDGE_MAPPINGS=str(MAPPINGS))  # type: ignore[call-arg]
    settings = settings.model_copy(update={"sf_username": None, "sf_client_id": None})
    process = WorkerProcess(settings, RunOptions(metrics_port=port, salesforce=False)).start()
    try:

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                return str(answer.read().decode())

        def found_prices_ok() -> float:
            for line in scrape().splitlines():
                if line.startswith("sf_bridge_stripe_requests_total{") and (
                    'outcome="ok"' in line and "list prices by lookup key" in line
                ):
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        before = found_prices_ok()
        gateway = StripeGateway(stripe_emulator.api_key, api_base=stripe_emulator.url)
        gateway.find_prices(["no-such-price"])
        assert found_prices_ok() == before + 1
    finally:
        assert process.stop()

"""`sf-bridge run` start-up and shutdown."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import create_engine
from typer.testing import CliRunner

from sf_bridge.cli import app
from sf_bridge.config import Settings
from sf_bridge.runner import RunOptions, WorkerProcess

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
    process = WorkerProcess(settings, RunOptions(overdue_interval_seconds=0.1)).start()
    assert process.intake is None
    assert {t.name for t in process.threads} >= {"sf-bridge-provisioning"}
    started = time.monotonic()
    assert process.stop()
    assert time.monotonic() - started < 5
    assert not any(t.is_alive() for t in process.threads)

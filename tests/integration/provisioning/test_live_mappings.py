"""Mapping edits in a running worker: an edit that does not check clean is refused and deals go
on being provisioned with the last good mappings, which the log, `/readyz` and the metrics
say; the next good edit is taken without a restart."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from sf_bridge import metrics
from sf_bridge.api import create_app
from sf_bridge.config import Settings
from sf_bridge.db.engine import make_engine, make_session_factory
from sf_bridge.db.models import Deal
from sf_bridge.mapping import load_mappings
from sf_bridge.provisioning.queue import enqueue_snapshot
from sf_bridge.worker_process import RunOptions, WorkerProcess
from tests.fixtures.api import api_settings, serve_in_thread
from tests.fixtures.mapping import EXAMPLE_MAPPINGS_DIR, copy_mappings, read_example_opportunity
from tests.fixtures.waiting import wait_until

CAT = "catalog.yaml"
GOOD_EDIT = ("description: People who can sign in.", "description: Users who can sign in.")


@pytest.fixture
def worker(
    db_url: str, tmp_path: Path, provisioning_emulator: Any
) -> Iterator[tuple[WorkerProcess, Path]]:
    provisioning_emulator.seed_catalog(load_mappings(EXAMPLE_MAPPINGS_DIR).catalog_prices())
    folder = copy_mappings(tmp_path / "mappings")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        DATABASE_URL=db_url,
        SF_BRIDGE_MAPPINGS=str(folder),
        STRIPE_API_KEY=provisioning_emulator.api_key,
        STRIPE_API_BASE=provisioning_emulator.url,
    )
    options = RunOptions(
        salesforce=False, mappings_poll_seconds=0.05, worker_options={"poll_interval": 0.05}
    )
    process = WorkerProcess(settings, options).start()
    try:
        yield process, folder
    finally:
        assert process.stop()


def provision(process: WorkerProcess, name: str, opportunity_id: str) -> Deal:
    """Enqueues an example opportunity under a new Id and waits until it settles."""
    record = copy.deepcopy(read_example_opportunity(name))
    record["Id"] = opportunity_id
    with process.session_factory() as session, session.begin():
        deal_id = enqueue_snapshot(session, record, source="file").id

    def settled() -> Deal | None:
        with process.session_factory() as session:
            deal = session.get(Deal, deal_id)
            assert deal is not None
            return deal if deal.status in ("done", "needs_attention") else None

    deal: Deal = wait_until(settled, 60, f"deal {opportunity_id} to settle")
    return deal


def readyz(db_url: str) -> dict[str, Any]:
    engine = make_engine(db_url)
    try:
        app = create_app(api_settings(db_url), make_session_factory(engine))
        with serve_in_thread(app) as url:
            answer = httpx.get(f"{url}/readyz", timeout=10)
            scrape = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        engine.dispose()
    body: dict[str, Any] = answer.json()
    body["status_code"] = answer.status_code
    body["metrics"] = scrape
    return body


def test_an_invalid_edit_keeps_the_last_good_mappings_and_the_next_good_edit_is_taken(
    worker: tuple[WorkerProcess, Path], db_url: str
) -> None:
    process, folder = worker
    assert process.mappings_loader is not None
    good_version = process.mappings_loader.status.version
    assert good_version == load_mappings(folder).version

    catalog = folder / CAT
    text = catalog.read_text()
    with capture_logs() as logs:
        catalog.write_text(text.replace("    unit: users\n", "    unit users\n"))
        wait_until(lambda: process.mappings_loader.status.stale, 30, "the edit to be refused")
        deal = provision(process, "enterprise-negotiated", "006Hs00001LiveAAAQ")
    assert deal.status == "done", deal.last_error
    assert deal.mapping_version == good_version
    [refused] = [e for e in logs if e["event"] == "mappings_edit_refused"]
    assert refused["mapping_version"] == good_version
    assert "catalog.yaml:10:5: [yaml_syntax]" in refused["first_problems"][0]

    assert b"sf_bridge_mappings_stale 1.0" in generate_latest(metrics.REGISTRY)
    ready = readyz(db_url)
    assert ready["status_code"] == 200, ready
    mappings = ready["checks"]["mappings"]
    assert mappings["stale"] is True
    [row] = mappings["workers"]
    assert (row["version"], row["stale"]) == (good_version, True)
    assert "[yaml_syntax]" in row["problem"]
    labels = f'replica="{row["replica"]}",version="{good_version}"'
    assert f"sf_bridge_worker_mappings_stale{{{labels}}} 1.0" in ready["metrics"]

    catalog.write_text(text.replace(*GOOD_EDIT))
    new_version = load_mappings(folder).version
    wait_until(
        lambda: process.mappings_loader.status.version == new_version,
        30,
        "the good edit to be taken",
    )
    assert not process.mappings_loader.status.stale
    deal = provision(process, "enterprise-negotiated", "006Hs00001LiveBBBQ")
    assert deal.status == "done", deal.last_error
    assert deal.mapping_version == new_version
    assert b"sf_bridge_mappings_stale 0.0" in generate_latest(metrics.REGISTRY)
    fresh = wait_until(
        lambda: (r := readyz(db_url))["checks"]["mappings"]["stale"] is False and r,
        30,
        "/readyz to report the new mappings",
    )
    assert fresh["checks"]["mappings"]["workers"][0]["version"] == new_version

"""Fixtures of the console's tests: the console site on each backend under test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sf_bridge.api import create_app
from sf_bridge.db.engine import make_engine, make_session_factory
from sf_bridge.provisioning.wiring import MappingsLoader, build_billing, build_worker
from tests.fixtures.api import serve_in_thread
from tests.fixtures.console import ConsoleSite, console_settings
from tests.fixtures.mapping import copy_mappings


@pytest.fixture
def site(db_url: str, tmp_path: Path, provisioning_emulator: Any) -> Iterator[ConsoleSite]:
    """The console_site of tests/fixtures/console.py, on each backend under test."""
    from sf_bridge.mapping import load_mappings

    mappings_dir = copy_mappings(tmp_path / "mappings")
    provisioning_emulator.seed_catalog(load_mappings(mappings_dir).catalog_prices())
    settings = console_settings(
        db_url,
        mappings_dir,
        STRIPE_API_KEY=provisioning_emulator.api_key,
        STRIPE_API_BASE=provisioning_emulator.url,
    )
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    app = create_app(settings, factory, billing=build_billing(settings))
    worker = build_worker(settings, factory, crm=None, mappings_loader=MappingsLoader(mappings_dir))
    with serve_in_thread(app) as url:
        yield ConsoleSite(url, settings, factory, mappings_dir, worker)
    engine.dispose()

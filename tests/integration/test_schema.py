"""The Alembic head matches the models, and start-up refuses an out-of-date schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from sf_bridge.db import migrate
from sf_bridge.db.engine import make_engine
from sf_bridge.db.models import Base
from sf_bridge.errors import SchemaOutOfDateError


def test_migrations_match_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ; add a migration: {diff}"


def test_current_schema_is_accepted(engine: Engine) -> None:
    migrate.ensure_current(engine)


def test_empty_database_is_refused_with_the_fixing_command(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SchemaOutOfDateError) as info:
        migrate.ensure_current(engine)
    assert "sf-bridge db upgrade" in info.value.user_message()
    engine.dispose()

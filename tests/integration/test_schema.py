"""The Alembic head matches the models, and start-up refuses an out-of-date schema."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

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


@pytest.mark.parametrize(
    ("table", "values"),
    [
        ("deals", {"opportunity_id": "006Hs00001AcmeYiar", "status": "received"}),
        (
            "deals",
            {"opportunity_id": "006Hs00001AcmeYIAR", "account_id": "001Hs00002AcmeCiar"},
        ),
        ("customers", {"sf_account_id": "001Hs00002AcmeCiar", "customer_key": "k"}),
        ("usage_counters", {"sf_account_id": "001Hs00002AcmeC", "feature": "f", "period": "p"}),
        ("usage_counters", {"sf_account_id": "001Hs00002AcmeCiar", "feature": "f", "period": "p"}),
        (
            "usage_records",
            {"sf_account_id": "001Hs00002AcmeCiar", "idempotency_key": "k", "quantity": 1},
        ),
    ],
)
def test_ids_are_refused_unless_in_their_18_character_form(
    engine: Engine, table: str, values: dict[str, object]
) -> None:
    """A lower-case suffix names the same record as the upper-case one: refused, as a
    15-character id is, in every table that keys by an account or opportunity id."""
    now = datetime(2026, 11, 20, tzinfo=UTC)
    defaults: dict[str, object] = {
        "deals": {
            "status": "received",
            "attempts": 0,
            "source": "file",
            "writeback_pending": False,
            "created_at": now,
            "updated_at": now,
        },
        "customers": {"name": "Acme", "created_at": now, "updated_at": now},
        "usage_counters": {"used": 0, "updated_at": now},
        "usage_records": {"feature": "f", "period": "p", "occurred_at": now, "recorded_at": now},
    }[table]  # type: ignore[assignment]
    row = {**defaults, **values}  # type: ignore[dict-item]
    columns = ", ".join(row)
    params = ", ".join(f":{c}" for c in row)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({params})"), row)

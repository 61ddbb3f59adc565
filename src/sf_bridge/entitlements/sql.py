"""INSERT ... ON CONFLICT on both supported databases (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def dialect_insert(session: Session | Connection, model: Any) -> Any:
    """An INSERT for `model` that supports `on_conflict_do_nothing` / `on_conflict_do_update`."""
    dialect = (
        session.dialect if isinstance(session, Connection) else session.get_bind().dialect
    ).name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")

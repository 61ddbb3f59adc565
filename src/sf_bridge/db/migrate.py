"""Schema migrations with Alembic: `sf-bridge db upgrade`, and the start-up schema check."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from sf_bridge.db import dialect
from sf_bridge.db.engine import check_connection, make_engine, normalise_url, reading
from sf_bridge.errors import SchemaOutOfDateError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(database_url).replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return script.get_current_head()


def current_revision(engine: Engine) -> str | None:
    with reading(engine).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(database_url: str, revision: str = "head") -> None:
    """Applies every pending migration, in one transaction."""
    engine = make_engine(database_url)
    try:
        check_connection(engine)
        cfg = alembic_config(database_url)
        with engine.connect() as conn:
            sqlite = dialect.rebuilds_tables_to_alter(conn)
            if sqlite:
                _sqlite_foreign_keys(conn, enabled=False)
            try:
                with conn.begin():
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, revision)
                    if sqlite:
                        _check_sqlite_foreign_keys(conn)
            finally:
                if sqlite:
                    _sqlite_foreign_keys(conn, enabled=True)
    finally:
        engine.dispose()


def _sqlite_foreign_keys(conn: Connection, *, enabled: bool) -> None:
    """SQLite changes a table's constraints by copying it into a new table and dropping the
    old one; with foreign keys enforced, that drop would cascade to the rows that refer to
    it (a deal's step attempts and events). SQLite's own procedure for such changes turns
    enforcement off outside the transaction and checks the keys before committing."""
    driver = conn.connection.driver_connection  # a pragma, not a SQLAlchemy transaction
    assert driver is not None
    driver.execute(f"PRAGMA foreign_keys={'ON' if enabled else 'OFF'}")


def _check_sqlite_foreign_keys(conn: Connection) -> None:
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(
            f"the migration left rows whose foreign keys match nothing: {broken[:5]}"
        )


def ensure_current(engine: Engine) -> None:
    """Refuses to go on when the database cannot be reached or its schema is not at the head
    revision."""
    check_connection(engine)
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaOutOfDateError(
            f"The database schema is at revision {current or 'none (empty database)'} "
            f"but this sf-bridge needs {head}.",
            hint="run `sf-bridge db upgrade` (with the same DATABASE_URL), then start again.",
        )

"""Where SQLite and PostgreSQL differ, in one place.

sf-bridge runs on SQLite (one process) and PostgreSQL (several replicas). The code elsewhere
asks this module what the database it holds can do, by capability, rather than testing the
dialect's name itself:

| capability | SQLite | PostgreSQL |
|---|---|---|
| `upsert(bind, table)`: `INSERT ... ON CONFLICT DO NOTHING / DO UPDATE` | yes | yes |
| `supports_row_locks`: `SELECT ... FOR UPDATE` | no | yes |
| `supports_skip_locked`: `SELECT ... FOR UPDATE SKIP LOCKED` | no | yes |
| `listen_notify`: `LISTEN` / `pg_notify` between processes | no | yes |
| `advisory_locks`: `pg_try_advisory_lock` (a lock held by a connection) | no | yes |
| `single_writer`: one write transaction at a time (`BEGIN IMMEDIATE`) | yes | no |
| `begin_statement`: a write / a read transaction opens with | `BEGIN IMMEDIATE` / `BEGIN` | - |
| `autocommit_reads`: reads need no transaction | no | yes |
| `rebuilds_tables_to_alter`: `ALTER` by copying the table (foreign keys off meanwhile) | yes | no |

`bind` is anything that reaches a database: an engine, a connection, a session, a session
factory, or a database URL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

POSTGRESQL = "postgresql"
SQLITE = "sqlite"

Bind = Engine | Connection | Session | sessionmaker[Session] | str


def dialect_name(bind: Bind) -> str:
    """`sqlite`, `postgresql` (or another SQLAlchemy backend's name)."""
    if isinstance(bind, str):
        return make_url(bind).get_backend_name()
    if isinstance(bind, sessionmaker):
        engine = bind.kw.get("bind")
        if not isinstance(engine, Engine | Connection):
            raise TypeError("the session factory is not bound to an engine")
        return engine.dialect.name
    if isinstance(bind, Session):
        return bind.get_bind().dialect.name
    return bind.dialect.name


def is_sqlite(bind: Bind) -> bool:
    return dialect_name(bind) == SQLITE


def is_postgresql(bind: Bind) -> bool:
    return dialect_name(bind) == POSTGRESQL


def upsert(bind: Bind, table: Any) -> Any:
    """An INSERT into `table` (a model or a Core table) that supports
    `on_conflict_do_nothing` / `on_conflict_do_update`."""
    name = dialect_name(bind)
    if name == POSTGRESQL:
        return postgresql.insert(table)
    if name == SQLITE:
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {name!r}")


def supports_row_locks(bind: Bind) -> bool:
    """`SELECT ... FOR UPDATE` locks the rows read until the transaction ends. SQLite has no
    row locks (the write transaction holds the whole database)."""
    return is_postgresql(bind)


def supports_skip_locked(bind: Bind) -> bool:
    """`FOR UPDATE SKIP LOCKED`: concurrent claimers skip each other's rows. SQLite has no
    row locks; its single writer serialises claims instead."""
    return is_postgresql(bind)


def listen_notify(bind: Bind) -> bool:
    """`LISTEN` / `pg_notify`: a commit in one process wakes the others."""
    return is_postgresql(bind)


def advisory_locks(bind: Bind) -> bool:
    """`pg_try_advisory_lock`: a lock that lives as long as the connection holding it."""
    return is_postgresql(bind)


def single_writer(bind: Bind) -> bool:
    """Every write transaction takes the database's one write lock (SQLite)."""
    return is_sqlite(bind)


def begin_statement(bind: Bind, *, reads_only: bool) -> str | None:
    """The statement that opens a transaction, or None where the driver's own is right.

    SQLite: a transaction that may write opens with `BEGIN IMMEDIATE`, taking the one write
    lock up front, so two writers never deadlock and a writer never finds its read snapshot
    stale when it comes to write (SQLITE_BUSY_SNAPSHOT). A transaction that only reads opens
    with a deferred `BEGIN`: in WAL mode it reads a snapshot without the write lock, so it
    neither waits for a writer nor makes one wait. PostgreSQL: every transaction reads its
    own snapshot and writers lock rows, so the driver's BEGIN serves both."""
    if not single_writer(bind):
        return None
    return "BEGIN" if reads_only else "BEGIN IMMEDIATE"


def autocommit_reads(bind: Bind) -> bool:
    """Reads can run without a transaction on a consistent enough view (PostgreSQL)."""
    return is_postgresql(bind)


def rebuilds_tables_to_alter(bind: Bind) -> bool:
    """SQLite changes a table's constraints by copying it into a new table (Alembic's batch
    mode), which needs foreign keys off while it runs."""
    return is_sqlite(bind)

"""The engine entitlement reads use.

On SQLite the shared engine's reads BEGIN deferred already (`sf_bridge.db.engine`); entitlement
reads get their own engine all the same, whose transactions BEGIN deferred on `query_only`
connections from a pool of their own, so a check never waits for a connection the worker holds:
in WAL mode they never wait for a writer and never block one. On PostgreSQL reads run without
a transaction (autocommit), which saves two round trips per check. Other databases use the
shared engine as it is.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event

from sf_bridge.db import dialect
from sf_bridge.db.engine import SQLITE_BUSY_TIMEOUT_MS


def read_engine_for(engine: Engine) -> Engine:
    if dialect.autocommit_reads(engine):
        # Each read is two statements on a consistent enough view (usage may be a moment newer
        # than the grants); without a transaction there is no BEGIN and ROLLBACK round trip.
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    if not dialect.single_writer(engine):
        return engine
    reader = create_engine(
        engine.url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )

    @event.listens_for(reader, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA query_only=ON")
        cur.close()

    @event.listens_for(reader, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return reader

"""Which replica holds the stream.

PostgreSQL: a session-level advisory lock on a connection of its own. The lock lives as long
as that connection: when the holder dies its connection closes, PostgreSQL releases the lock,
and the next replica polling `try_acquire` takes over within one poll interval.
SQLite serves one process only, which is always the leader.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from sqlalchemy import Connection, Engine, text

from sf_bridge.db.dialect import advisory_locks
from sf_bridge.logging import get_logger

log = get_logger(__name__)


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for `pg_try_advisory_lock`."""
    digest = hashlib.sha256(f"sf-bridge:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class LeaderLock(Protocol):
    def try_acquire(self) -> bool: ...

    def still_held(self) -> bool: ...

    def release(self) -> None: ...


class SingleProcessLock:
    """SQLite: one process, always the leader."""

    def try_acquire(self) -> bool:
        return True

    def still_held(self) -> bool:
        return True

    def release(self) -> None:
        return None


class AdvisoryLock:
    """`pg_try_advisory_lock` held on a dedicated autocommit connection."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.key = lock_key(name)
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return self.still_held()
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            query = text("SELECT pg_try_advisory_lock(:k)")
            got = bool(conn.execute(query, {"k": self.key}).scalar())
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        log.info("stream_leadership_acquired", lock=self.name)
        return True

    def still_held(self) -> bool:
        if self._conn is None:
            return False
        # A session-level lock lasts as long as its session: a live connection still holds it.
        try:
            self._conn.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("stream_leadership_lost", lock=self.name, error=type(exc).__name__)
            self._drop()
            return False
        return True

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        except Exception as exc:
            log.warning("stream_leadership_release_failed", error=type(exc).__name__)
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception as exc:
                log.debug("leader_connection_close_failed", error=type(exc).__name__)
            self._conn = None


def make_leader_lock(engine: Engine, name: str) -> LeaderLock:
    return AdvisoryLock(engine, name) if advisory_locks(engine) else SingleProcessLock()
